"""One switch for the fast backends of the spiking operators: ``torch`` | ``c`` | ``triton``.

Every backend computes the same numbers as the step-by-step simulation; they differ in speed only.
``torch`` is the eager PyTorch fast path (the reference fast path, any device and dtype), ``c`` the
fused CPU kernels of :mod:`spikingjelly_mbe.kernels` (float32 on the CPU), ``triton`` the fused
kernels of :mod:`spikingjelly_mbe.kernels.triton_ops` (CUDA tensors; CPU tensors under the Triton
interpreter, ``TRITON_INTERPRET=1``). An operand a backend cannot take runs the ``torch`` path.

The choice, strongest first: :func:`use` (a context manager), the environment variable
``SPIKINGJELLY_MBE_BACKEND``, and otherwise by device: ``c`` on the CPU, ``triton`` on CUDA when Triton is importable, else ``torch``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("torch", "c", "triton")
ENV = "SPIKINGJELLY_MBE_BACKEND"

_chosen: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("sjmbe_backend", default=None)


def check_backend(name: object, where: str = "backend") -> str:
    """``name`` must be one of :data:`BACKENDS`; returns it."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {name!r}")
    return name


def configured() -> Optional[str]:
    """The backend asked for by :func:`use` or the environment, or ``None`` (chosen by device)."""
    chosen = _chosen.get()
    if chosen is not None:
        return chosen
    name = os.environ.get(ENV, "").strip()
    return check_backend(name, f"${ENV}") if name else None


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the operators on backend ``name`` inside the block."""
    token = _chosen.set(check_backend(name))
    try:
        yield
    finally:
        _chosen.reset(token)


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    """Whether the ``triton`` package is installed."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_for(device: torch.device) -> str:
    """The backend a device gets when none is asked for."""
    if device.type == "cuda":
        return "triton" if triton_importable() else "torch"
    return "c" if device.type == "cpu" else "torch"


def select(*tensors: torch.Tensor) -> str:
    """The backend for these operands (the first one's device decides the default). Asking for
    ``triton`` with CPU tensors outside the interpreter, or without Triton installed, is an error
    naming the fix."""
    name = configured()
    if name is None:  # the device's default: always one that takes its tensors
        return default_for(tensors[0].device if tensors else torch.device("cpu"))
    device = tensors[0].device if tensors else torch.device("cpu")
    if name == "triton":
        if not triton_importable():
            raise RuntimeError(f"{ENV}=triton, but triton is not installed: pip install triton, or choose "
                               "'torch' / 'c'")
        if device.type == "cpu" and not interpreting():
            raise RuntimeError(f"{ENV}=triton on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1), "
                               "or move the model to CUDA, or choose 'torch' / 'c'")
    return name
