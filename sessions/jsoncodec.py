"""JSON text for pydantic models that keeps inf and NaN.

Pydantic's own ``model_dump_json`` writes ``inf`` as ``null``, which then fails validation on the
way back (an open-loop level at rate ``inf`` is legal), so stored JSON uses the ``Infinity`` / ``NaN``
constants that ``model_validate_json`` and ``pydantic_core.from_json`` accept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json


def dump_model(model: BaseModel, *, exclude: set[str] | None = None) -> str:
    return to_json(model.model_dump(exclude=exclude), inf_nan_mode="constants").decode()


def dump_plain(value: Any) -> str:
    """JSON text for plain Python data (dicts, lists, numbers, strings, datetimes)."""
    return to_json(value, inf_nan_mode="constants").decode()
