"""How much the model's output depends on a tensor inside it, from calibration: gradients of
``<output, u>`` through the float function, ``u`` drawn so that ``E[g g^T]`` is the Fisher information.

For a model returning ``logits``, ``u = onehot(y) - softmax(logits)`` with ``y`` drawn from the softmax,
so that ``E[g g^T]`` is the Fisher information (the curvature of the KL divergence of the output
distribution: what perplexity and accuracy first lose); for any other output (hidden states), ``u``
is standard normal (``E[g g^T] = J^T J``, the output's squared error). The digit allocation
(:func:`~.allocation.sensitivities`) weighs each site's error so, and the channel ranges of the
weight layers' inputs are chosen so (:mod:`.channel_ranges`).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..ops.base import float_reference_mode
from .calibration import Batch, run_batch


def main_tensor(result: object) -> torch.Tensor:
    """A model's output tensor: itself, its ``last_hidden_state``, or its first tensor."""
    if isinstance(result, torch.Tensor):
        return result
    hidden = getattr(result, "last_hidden_state", None)
    if hidden is not None:
        return hidden
    return next(t for t in (result.values() if isinstance(result, Mapping) else result) if isinstance(t, torch.Tensor))


def first_tensor(value: object) -> Optional[torch.Tensor]:
    """``value`` itself when a tensor, else the first tensor of a tuple or list (``None`` when none)."""
    if isinstance(value, torch.Tensor):
        return value
    return next((t for t in value if isinstance(t, torch.Tensor)), None) if isinstance(value, (tuple, list)) else None


def returns_logits(snn: nn.Module, batch: Batch, device: Optional[torch.device] = None) -> bool:
    """Whether ``snn``'s output on ``batch`` (one forward through the float function) has ``logits``."""
    with torch.no_grad(), float_reference_mode():
        return getattr(run_batch(snn, batch, device), "logits", None) is not None


def output_direction(result: object, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(output, u)``: the model's logits (else :func:`main_tensor`) and the random direction ``u``
    (float64, on the output's device) whose ``<output, u>`` the gradients are taken of."""
    logits = getattr(result, "logits", None)
    if logits is None:
        out = main_tensor(result)
        return out, torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device)
    probs = torch.softmax(logits.detach().double(), -1).reshape(-1, logits.shape[-1])
    drawn = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    direction = (-probs).scatter_add_(1, drawn, torch.ones_like(drawn, dtype=probs.dtype))
    return logits, direction.reshape(logits.shape)


def float_gradients(snn: nn.Module, modules: Mapping[str, nn.Module], batches: Iterable[Batch], at_input: bool,
                    seed: int = 0, directions: int = 1) -> Iterator[Dict[str, Tuple[torch.Tensor, torch.Tensor]]]:
    """Per batch, ``{path: (value, squares)}`` for each of ``modules``' output (``at_input``: its first
    input) that the output depends on: the value detached and the squared gradient of ``<output, u>``
    (:func:`output_direction`) at it, float64, summed over ``directions`` draws of ``u`` (one backward
    each), through the float function (``snn`` under
    :func:`~spikingjelly_mbe.ops.base.float_reference_mode`). A module whose tensor the output does not
    depend on (or that did not run) is left out of that batch's dict. The parameters'
    ``requires_grad`` are restored after."""
    generator = torch.Generator().manual_seed(seed)
    captured: Dict[str, torch.Tensor] = {}

    def keep(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object = None) -> None:
            value = first_tensor(args if at_input else output)
            if value is not None and value.is_floating_point() and value.requires_grad:
                captured[path] = value
        return hook
    device = next((p.device for p in snn.parameters()), None)
    handles = [m.register_forward_pre_hook(keep(p)) if at_input else m.register_forward_hook(keep(p))
               for p, m in modules.items()]
    trainable = {name: p.requires_grad for name, p in snn.named_parameters()}
    snn.requires_grad_(True)
    try:
        for batch in batches:
            captured.clear()
            squares: Dict[str, torch.Tensor] = {}
            with torch.enable_grad(), float_reference_mode():
                result = run_batch(snn, batch, device)
                paths = list(captured)
                for draw in range(directions if paths else 0):
                    out, direction = output_direction(result, generator)
                    found = torch.autograd.grad((out.double() * direction).sum(), [captured[p] for p in paths],
                                                allow_unused=True, retain_graph=draw + 1 < directions)
                    for p, g in zip(paths, found):
                        if g is not None:
                            squares[p] = g.double().square() + squares[p] if p in squares else g.double().square()
            yield {p: (captured[p].detach(), g2) for p, g2 in squares.items()}
    finally:
        captured.clear()
        for handle in handles:
            handle.remove()
        for name, p in snn.named_parameters():
            p.requires_grad_(trainable[name])

