"""Shared test helpers."""
import logging
import os

import pytest

# the Triton kernels run on CPU tensors in the Triton interpreter, which must be on before triton is
# first imported (its own library functions are compiled or interpreted as of that import)
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def quiet_clamp_warnings():
    """Random tiny models clamp a few operands beyond the calibrated ranges: counted, not printed."""
    logger = logging.getLogger("spikingjelly_mbe")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture
def script_main(monkeypatch):
    """Run a script's ``main()`` in this process with ``argv`` (as ``python <script> <argv>`` runs it, without
    a fresh interpreter's imports); its thread count is restored afterwards."""
    import importlib.util
    import sys

    import torch

    threads = torch.get_num_threads()

    def run(path, *argv: str) -> None:
        spec = importlib.util.spec_from_file_location(f"{path.stem}_under_test", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setattr(sys, "argv", [str(path), *argv])
        spec.loader.exec_module(module)
        module.main()

    yield run
    torch.set_num_threads(threads)
