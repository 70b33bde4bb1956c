"""A command's JSON document to --out and/or stdout, as strict JSON (jq and browsers refuse ``Infinity``).

A rate of infinity (every request at once) is written ``"inf"``, as vLLM writes its request rate; NaN,
a value that was never measured, is ``null``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from backends.errors import ConfigError


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced: ``"inf"``/``"-inf"``, NaN → None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def write_document(document: dict[str, Any], out: Path | None, *, to_stdout: bool) -> None:
    """Write ``document`` to ``out`` (when given) and print it (when ``to_stdout``); one line on failure."""
    text = json.dumps(strict_json(document), indent=1, allow_nan=False)
    if out is not None:
        try:
            out.write_text(text)
        except OSError as err:
            raise ConfigError(f"cannot write {out}: {err.strerror or err}") from None
    if to_stdout:
        sys.stdout.write(text + "\n")
