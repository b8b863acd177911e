"""Modules imported on first use, so a web process that only serves never pays for them.

Why: scikit-learn, SciPy's statistics, pandas and pyarrow together cost a web process ~200 MB
of its ~300 MB (bench/README.md, "Memory"). They are needed where a model is trained or
checked, an export written or a drift test run, not to answer a predict. A module that uses
one of them many times writes::

    if TYPE_CHECKING:
        import pyarrow as pa
    else:
        pa = lazy_module("pyarrow")

and keeps its code as it is: the real import happens on the first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module ``name``; imports it when an attribute is first read."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._lazy_name), attr)
        setattr(self, attr, value)  # later reads are plain attribute hits
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


def lazy_module(name: str) -> Any:
    return LazyModule(name)
