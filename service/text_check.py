"""Refuse text that is not valid Unicode before it is stored.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``, what a JavaScript client sends when it
cuts a string inside an emoji); Python decodes it into a ``str`` that can never be encoded
as UTF-8. Stored, it broke every later export of the task (issue #16), so every input that
reaches storage — API bodies, batch items, task definitions from the command line — is
checked here and refused with a 422 that names the field.
"""

from __future__ import annotations

import re
from typing import Any

from service.errors import ValidationFailed

_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON text can only carry a surrogate as a \\uD8xx-\\uDFxx escape: checking the raw bytes
#: first keeps the walk off the hot path for every ordinary body.
_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def may_hold_surrogates(raw: bytes) -> bool:
    return _ESCAPE.search(raw) is not None


def invalid_text_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) holding a lone surrogate."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                return where
            found = invalid_text_path(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = invalid_text_path(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


def ensure_valid_text(value: Any, where: str = "") -> None:
    path = invalid_text_path(value, where)
    if path is None:
        return
    # The path may itself hold the surrogate (a key): spell it out so the answer is valid text.
    name = (path or "body").encode("utf-8", "backslashreplace").decode("utf-8")
    raise ValidationFailed(
        f"{name}: not valid Unicode text (a lone surrogate, e.g. a string cut inside an emoji)",
        {name: ["Not valid Unicode: contains a lone surrogate."]},
    )
