"""The project cache folder (fitted neurons, compiled kernels, prepared assets): the bottom layer."""
from __future__ import annotations

import os
import tempfile
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


def check_writable(path: Path) -> Path:
    """``path`` (a cache entry about to be computed) can be written: not a folder or other non-file,
    and its folder takes a new file. Checked before the work that fills it, so that work is not lost."""
    if path.exists() and not path.is_file():
        raise CacheDirError(f"cache entry {path} exists and is not a file (a folder?): remove it, or set ${CACHE_ENV} "
                            "to another writable folder")
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CacheDirError(f"cache entry {path} cannot be written ({type(err).__name__}: {err.strerror or err}); "
                            f"set ${CACHE_ENV} to a writable folder") from err
    return path
