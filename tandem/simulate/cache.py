"""The simulator's training store (``tandem simulate --cache DIR``, docs/backtest.md).

One joblib file per training, named by ``service.ml.pipeline.training_key`` (SHA-256 of the
cases, labels, fields, knobs and the scikit-learn version). The files are pickles: loading
one runs whatever it holds, so the folder must be the user's own — which is why this lives
in the shell and the library (``service/``) reads no pickle at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import joblib

if TYPE_CHECKING:
    from service.ml.pipeline import TrainedModel


class FolderCache:
    """Finished trainings as files in ``folder`` (created when missing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.joblib"

    def load(self, key: str) -> TrainedModel | None:
        path = self._path(key)
        if not path.exists():
            return None
        trained: TrainedModel = joblib.load(path)
        return trained

    def save(self, key: str, trained: TrainedModel) -> None:
        path = self._path(key)
        partial = path.with_suffix(f".{os.getpid()}.part")
        joblib.dump(trained, partial)
        os.replace(partial, path)  # whole files only, also with seeds replayed in parallel
