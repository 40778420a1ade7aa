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
