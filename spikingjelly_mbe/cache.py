"""The project cache folder (fitted neurons, compiled kernels, prepared assets): the bottom layer."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPIKINGJELLY_MBE_CACHE"


class CacheDirError(OSError):
    """The project cache folder cannot be created (a file is in the way, or no permission)."""


def cache_dir(*parts: str) -> Path:
    """The project cache (``$SPIKINGJELLY_MBE_CACHE`` or ``~/.cache/spikingjelly_mbe``), created."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikingjelly_mbe"
    path = Path(os.environ.get(CACHE_ENV) or default).joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheDirError(f"cache folder {path} cannot be created ({type(err).__name__}: {err.strerror or err}); "
                            f"set ${CACHE_ENV} to a writable folder, or remove the file in the way") from err
    return path
