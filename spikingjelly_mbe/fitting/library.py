"""The shipped library of pre-fitted neurons (package data) and its loader."""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import List

from ..neurons.multibasis import positive_int
from .fitted import FittedNeuron

LIBRARY_DIR = Path(__file__).with_name("library")
NAME = re.compile(r"[A-Za-z0-9_]+")  # a target name: no path separators, no dots


def available() -> List[str]:
    """Keys of every shipped fit, e.g. ``['gelu-fs-T16', 'gelu-mbe-N4-T16', ...]``."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _load(key: str) -> FittedNeuron:
    return FittedNeuron.load(LIBRARY_DIR / f"{key}.json")


def load_fitted(target: str, kind: str = "mbe", N: int = 4, T: int = 16) -> FittedNeuron:
    """An independent copy of the shipped fit of ``target`` (FS ignores ``N``); raises ``KeyError``
    listing what ships."""
    if not isinstance(target, str) or not NAME.fullmatch(target):
        raise ValueError(f"target must be a plain name such as 'gelu' (letters, digits, '_'), got {target!r}; "
                         f"shipped: {available()}")
    if kind not in ("mbe", "fs"):
        raise ValueError(f"kind must be 'mbe' or 'fs', got {kind!r}")
    T = positive_int("T", T)
    N = positive_int("N", N) if kind == "mbe" else N
    key = f"{target}-fs-T{T}" if kind == "fs" else f"{target}-{kind}-N{N}-T{T}"
    if not (LIBRARY_DIR / f"{key}.json").is_file():
        ships = available()
        same = [k for k in ships if k.startswith(f"{target}-")]
        raise KeyError(f"no shipped fit {key!r}; shipped for {target!r}: {same or 'none'}; "
                       f"all shipped: {ships}. Fit it with spikingjelly_mbe.fit_neuron(...).")
    return copy.deepcopy(_load(key))  # the cached object is never handed out: edits stay local
