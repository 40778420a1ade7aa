"""Shared test helpers."""
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

# the Triton kernels run on CPU tensors in the Triton interpreter, which must be on before triton is
# first imported (its own library functions are compiled or interpreted as of that import)
os.environ.setdefault("TRITON_INTERPRET", "1")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` imported from its file (``benchmarks/`` is not a package,
    and ``sys.path`` stays as it is)."""
    module_name = f"benchmarks_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the file runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """``benchmark_script("ops_bench")``: a script of ``benchmarks/`` as a module."""
    return load_benchmark


@pytest.fixture(scope="module")
def quiet_clamp_warnings():
    """Random tiny models clamp a few operands beyond the calibrated ranges: counted, not printed."""
    logger = logging.getLogger("spikingjelly_mbe")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)
