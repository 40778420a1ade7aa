"""The shipped library of pre-fitted neurons (package data) and its loader."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import List

from .fitted import FittedNeuron

LIBRARY_DIR = Path(__file__).with_name("library")


def available() -> List[str]:
    """Keys of every shipped fit, e.g. ``['gelu-fs-T16', 'gelu-mbe-N4-T16', ...]``."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _load(key: str) -> FittedNeuron:
    return FittedNeuron.load(LIBRARY_DIR / f"{key}.json")


def load_fitted(target: str, kind: str = "mbe", N: int = 4, T: int = 16) -> FittedNeuron:
    """The shipped fit of ``target`` (FS ignores ``N``); raises ``KeyError`` listing what ships."""
    key = f"{target}-fs-T{T}" if kind == "fs" else f"{target}-{kind}-N{N}-T{T}"
    if not (LIBRARY_DIR / f"{key}.json").is_file():
        ships = available()
        same = [k for k in ships if k.startswith(f"{target}-")]
        raise KeyError(f"no shipped fit {key!r}; shipped for {target!r}: {same or 'none'}; "
                       f"all shipped: {ships}. Fit it with spikingjelly_mbe.fit_neuron(...).")
    fitted = _load(key)
    return fitted
