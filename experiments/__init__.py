"""Hydra entry points over the public ``spikingjelly_mbe`` API: ``fit``, ``report`` (and ``convert``).

Configs live in ``conf/``; their schemas (dataclasses registered in Hydra's ConfigStore) in
:mod:`experiments.config`. Every job writes ``metrics.json``, tables and PNGs to its Hydra output
folder and logs one W&B run (offline by default). See ``docs/experiments.md``.
"""
