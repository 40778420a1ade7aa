"""Spiking LayerNorm and RMSNorm: squares and products by spikes, ``1/sqrt`` by an MBE neuron."""
from __future__ import annotations

import ctypes
import math
import weakref
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..fitting.targets import default_split_bits
from . import flops
from .base import DEFAULT_MODE, DEFAULT_N, DEFAULT_T, Count, SpikingOp, float_function, working_dtype
from .coding import (CODES, DEFAULT_CODE, IdentityCoder, check_code, check_flag, check_steps, element_exponent,
                     equivalent_digits, total)
from .products import product_sops, spike_product
from .split import SplitFunction

MIN_ROW_EXPONENT = -40  # rows with max |c| < 2^-40 scale as if it were 2^-40: eps 2^80 stays finite
EPS_NAMES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps")  # where norm modules keep their eps


def _batch_statistics(module: nn.Module) -> bool:
    """A batch or instance norm that normalises with the statistics of its input (no running ones in use)."""
    return module.training or module.running_mean is None


# per-group norms: class -> (channels, groups; None: BatchNorm over batch and positions) when it uses its
# input's statistics, else None (a BatchNorm or InstanceNorm on running statistics is linear)
GROUP_NORM_CLASSES: Dict[type, Callable[[nn.Module], Optional[Tuple[int, Optional[int]]]]] = {
    nn.GroupNorm: lambda m: (m.num_channels, m.num_groups),
    **{cls: (lambda m: (m.num_features, m.num_features) if _batch_statistics(m) else None)
       for cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    **{cls: (lambda m: (m.num_features, None) if _batch_statistics(m) else None)
       for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
}


def norm_module_parts(module: nn.Module) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], float]:
    """``(weight, bias, eps)`` of a norm module: its ``eps`` under any of :data:`EPS_NAMES` (1e-6 when
    it has none; ``nn.RMSNorm``'s ``None`` is float32's machine epsilon), the very same tensors."""
    eps = next((float(v) for v in (getattr(module, n, None) for n in EPS_NAMES)
                if isinstance(v, (int, float)) and not isinstance(v, bool)), 1e-6)
    if isinstance(module, nn.RMSNorm) and module.eps is None:
        eps = torch.finfo(torch.float32).eps
    return getattr(module, "weight", None), getattr(module, "bias", None), eps


def norm_shape(module: nn.Module) -> Tuple[int, ...]:
    """The normalised shape of a norm module (``normalized_shape``, else its weight's shape)."""
    shape = getattr(module, "normalized_shape", None)
    if shape is None and isinstance(getattr(module, "weight", None), torch.Tensor):
        shape = module.weight.shape
    if shape is None:
        raise ValueError(f"cannot tell the normalised shape of {type(module).__name__}: it has neither "
                         "normalized_shape nor a weight")
    return (shape,) if isinstance(shape, int) else tuple(shape)


def check_twin(op: SpikingOp, module: nn.Module, shape: Sequence[int]) -> SpikingOp:
    """``op``, once its float reference equals ``module`` on a random input of ``shape``; a
    ``ValueError`` naming the module otherwise (its class is not the norm ``from_float`` was asked for)."""
    param = next(module.parameters(), None)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    x = x.to(param) if param is not None else x
    with torch.no_grad():
        expected, got = module(x), op.float_reference(x)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape or \
            not torch.allclose(expected.double(), got.double(), rtol=1e-3, atol=1e-4):
        raise ValueError(f"{type(op).__name__}.from_float: {type(module).__name__} does not compute a "
                         f"{type(op).__name__.removeprefix('Spiking')} with its own weight, bias and eps")
    return op


# per norm operator, what its C kernel reads besides the rows (_SpikingNorm.c_tables) and the table that address
# points into; held beside the module, so that pickling or copying one carries no ctypes arrays
_C_TABLES: "weakref.WeakKeyDictionary[_SpikingNorm, tuple]" = weakref.WeakKeyDictionary()


class _SpikingNorm(SpikingOp):
    """``(x - mu) / sqrt(mean((x - mu)^2) + eps) * weight + bias`` over the trailing ``normalized_shape``.

    1. ``c = x - mu`` (LayerNorm; RMSNorm keeps ``c = x``). The row's scale leaves as a power of
       two, ``z = c 2^-k`` with ``k`` the exponent of ``max |c|`` (a comparison and an exponent
       shift), so ``z`` lies in ``(-1, 1)`` and every identity range is fixed by construction:
       no calibration. With ``element_exponents`` (the default) each element's code carries its own
       exponent too: ``z_i = 2^(e_i) u_i`` with ``e_i`` the exponent of ``|z_i|`` (``|u_i|`` in
       ``[1/2, 1)``; ``e_i >= -2T``, below which an element's error is at most ``2^-3T`` of the row's
       largest; ``e_i >= -3T`` in centred codes, see below; again a comparison and an exponent shift, as
       Softmax's ``2^floor``),
       ``u_i`` takes the ``T`` digits and every spike of element ``i`` weighs ``d[t] 2^(e_i)``. A
       row's small elements then keep ``T`` significant digits instead of the few below the row's
       largest: rows whose maximum is 13 times their RMS (outlier channels, as in SmolLM2's hidden
       states) come out with 20x less noise at T=8 (0.3 % of the RMS, not 5.8 %), for about 2.6
       more spikes per element (``tests/test_ops_nonlinear.py``).
    2. ``v = sum_i z_i^2 / n`` by the spiking product of ``z``'s MBE_Id code with itself, ``D``
       pre-scaled by ``1/n`` (Eqs. 10-12).
    3. ``v + eps 2^-2k = M 2^E`` (``torch.frexp``); if ``E`` is odd, ``M <- 2M`` and ``E <- E - 1``
       (parity fix), so ``M`` is in ``[1, 4)`` and ``1/sqrt(v + eps 2^-2k) = 2^(-E/2) / sqrt(M)``
       with ``1/sqrt(M)`` from the ``rsqrt`` :class:`SplitFunction`.
    4. ``z * 1/sqrt(M)`` through the spiking product, times ``2^(-E/2)``; the scale ``2^k`` of
       ``c`` cancels against the one inside the square root. The affine ``weight``, ``bias`` are
       per-channel constant synaptic weights and biases, applied as given (never modified).
       A row whose ``z`` digits are all 0 (e.g. a constant row) gives ``bias``; its ``1/sqrt``
       stage does not fire (it would only scale zeros).

    ``split_bits=b`` moves the top ``b`` digits of ``M`` into a table of ``2^b`` constant weights
    (see :mod:`~spikingjelly_mbe.ops.split`; default 3, at most ``T - 1``); ``b=0`` is the paper's form
    (one neuron on ``[1, 4)``). ``code`` is the digit code of every MBE_Id stage (:data:`~.coding.CODES`).
    ``centered_codes`` (the default) codes the values of known magnitude band, ``|u_i|`` in ``[1/2, 1)``
    (with ``element_exponents``) and ``1/sqrt(M)`` in the split function's outputs (about ``(1/2, 1]``),
    as a centre spike plus ``T`` signed digits of the offset (:meth:`~.coding.IdentityCoder.centred`,
    Eqs. 8-9): about two binary digits more at one spike more per element. Its exponents reach
    ``e_i >= -3T``: an element clamped there with ``|u_i| < 1/4`` codes 0 (error below ``2^-(3T+2)`` of the
    row's largest, as the plain code's ``2^-(3T+1)``), one in ``[1/4, 1/2)`` codes ``1/2``. At T=4 the
    norms' RMS error falls to 0.53-0.61x (``tests/test_centred_codes.py``). SOPs: one per spike of
    every neuron and the coincidences of both products. Fast mode on CPU float32 runs the stages in one
    fused kernel (:meth:`fused`) with the same float operations.
    """

    centered: bool
    element_flops: int
    row_flops: int

    def __init__(self, normalized_shape: Union[int, Sequence[int]], weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], eps: float, T: int, mode: str, N: int,
                 split_bits: Optional[int], code: str, element_exponents: bool, centered_codes: bool) -> None:
        super().__init__(mode)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"normalized_shape must be positive integers, got {normalized_shape!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be positive and finite (the variance can be 0), got {eps!r}")
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        self.normalized_shape, self.eps, self.T, self.code = shape, float(eps), check_steps(T), check_code(code)
        self.precision_digits = equivalent_digits(self.code, self.T)  # sets the working dtype
        self.element_exponents = check_flag(element_exponents, "element_exponents")
        self.centered_codes = check_flag(centered_codes, "centered_codes")
        # the lowest element exponent (-1: the row's alone): a centred code's tail reaches 2^-3T, as the plain one's
        self.element_span = (3 if centered_codes else 2) * T if element_exponents else -1
        self.weight = weight if weight is None or isinstance(weight, nn.Parameter) else nn.Parameter(weight, False)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, False)
        self.rsqrt = SplitFunction("rsqrt", T, N, default_split_bits(T) if split_bits is None else split_bits, code)
        # u = z 2^-e lies in [1/2, 1) and 1/sqrt(M) in the split function's outputs: centred codes
        self.z_coder = IdentityCoder(T, 1.0, code, floor=0.5 if element_exponents and centered_codes else 0.0)
        self.rho_coder = IdentityCoder(T, self.rsqrt.max_output, code,
                                       floor=self.rsqrt.min_output if centered_codes else 0.0)

    def check_shape(self, x: torch.Tensor) -> Tuple[int, ...]:
        k = len(self.normalized_shape)
        if x.dim() < k or x.shape[x.dim() - k:] != self.normalized_shape:
            expected = ", ".join(["..."] + [str(s) for s in self.normalized_shape])
            raise ValueError(f"{type(self).__name__} expects input of shape [{expected}], got {tuple(x.shape)}")
        return tuple(range(-k, 0))

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        if self.centered:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        dims = self.check_shape(x)
        n = math.prod(self.normalized_shape)
        dtype = working_dtype(x, self.precision_digits)
        affine = [p if p is None or p.dtype == dtype else p.detach().to(dtype) for p in (self.weight, self.bias)]
        out = self.normalize(x, dims, n, *affine)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def normalize(self, x: torch.Tensor, dims: Tuple[int, ...], n: int, weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Stages 1-4 over the ``n`` elements of ``dims`` (one row each), then ``weight`` and ``bias``
        (broadcast against the rows; in the working dtype); records the statistics."""
        given = [p for p in (weight, bias) if p is not None]
        # the backend, chosen once per call
        chosen = kernels.backend.select(x) if not self.simulating and x.numel() and self.rsqrt.tabulated else "torch"
        if chosen == "c" and kernels.takes(x, *given, row=n):
            out, (spikes, sops, nonfinite) = self.fused(x, n, weight, bias)
            self.counted_nonfinite(x, "input", nonfinite)
        elif chosen == "triton" and kernels.triton_usable(x, *given, row=n):
            out, (spikes, sops, nonfinite) = self.by_triton(x, n, weight, bias)
            self.counted_nonfinite(x, "input", nonfinite)
        else:
            self.check_input(x, "input")
            out, spikes, sops = self.stages(x.to(working_dtype(x, self.precision_digits)), dims, n)
            if weight is not None:
                out = out.mul_(weight.detach())
            if bias is not None:
                out = out.add_(bias.detach())
        rows = x.numel() // n
        self.record(spikes=spikes, neurons=x.numel() + (SplitFunction.NEURONS_PER_ELEMENT + 1) * rows, sops=sops,
                    ann_flops=self.element_flops * x.numel() + self.row_flops * rows)
        return out

    def stages(self, xs: torch.Tensor, dims: Tuple[int, ...], n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 1-4 in PyTorch (both modes), before the affine map: ``(output, spikes, SOPs)``."""
        simulate = self.simulating
        c = xs - (xs.sum(dims, keepdim=True, dtype=torch.float64) / n).to(xs.dtype) if self.centered else xs
        _, k = torch.frexp(c.abs().amax(dims, keepdim=True))  # max |c| < 2^k
        k = k.clamp_(min=MIN_ROW_EXPONENT)
        scale = torch.exp2(-k.to(c.dtype))
        z = c.mul_(scale) if self.centered else c * scale
        if self.element_exponents:
            shift = element_exponent(z, self.element_span)
            z_code = self.z_coder.encode(z.div_(shift), simulate, (-1.0, 1.0))[0].shifted(shift)
        else:
            z_code, _ = self.z_coder.encode(z, simulate, (-1.0, 1.0))
        squares = spike_product(z_code, z_code, simulate, 1.0 / n)
        variance = squares.sum(dims, keepdim=True, dtype=torch.float64).to(xs.dtype)
        mantissa, exponent = torch.frexp(variance + self.eps * torch.exp2(-2.0 * k.to(c.dtype)))
        odd = (exponent - 1) % 2  # v = (2 mantissa) 2^(exponent - 1); make the exponent even
        rho, rho_spikes = self.rsqrt.evaluate(2 * mantissa * torch.exp2(odd.to(c.dtype)), simulate)
        live = variance > 0  # every digit of z is 0: the output is 0 whatever 1/sqrt is, so that stage does not fire
        rho, rho_spikes = rho * live, rho_spikes * live
        rho_code, _ = self.rho_coder.encode(rho, simulate, (0.0, self.rho_coder.A))
        shift = torch.exp2(-torch.div(exponent - 1 - odd, 2, rounding_mode="floor").to(c.dtype))
        out = spike_product(z_code, rho_code, simulate, shift)
        spikes = total(z_code.counts) + total(rho_spikes) + total(rho_code.counts)
        return out, spikes, spikes + product_sops(z_code, z_code) + product_sops(z_code, rho_code)

    def fused(self, xs: torch.Tensor, n: int, weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """Fast mode's stages and the affine map in one compiled pass per row on the ``c`` backend
        (:mod:`spikingjelly_mbe.kernels`), the same float32 operations as :meth:`stages`:
        ``(output, (spikes, SOPs, NaN/Inf inputs))``."""
        weight, bias = (None if p is None else p.contiguous() for p in (weight, bias))
        out, (spikes, coincidences, nonfinite) = kernels.rowwise(
            "sjmbe_norm_f32", xs, n, 3, int(self.centered), self.eps, MIN_ROW_EXPONENT,
            self.element_span, kernels.address(weight), kernels.address(bias),
            *self.c_tables())
        return out, (spikes, spikes + coincidences, nonfinite)

    def c_tables(self) -> Tuple[ctypes.Array, ctypes.Array, int, ctypes.Array]:
        """The C kernel's coders and ``1/sqrt`` table (z, rsqrt, the table's address, rho), built on the
        first call: an operator's coders and split function are fixed when it is built."""
        held = _C_TABLES.get(self)
        if held is None:
            rsqrt_params, rsqrt_table = self.rsqrt.kernel_args(torch.float32)
            z_params, rho_params = (kernels.doubles(c.row_params(torch.float32))
                                    for c in (self.z_coder, self.rho_coder))
            held = _C_TABLES[self] = (z_params, rsqrt_params, rsqrt_table.data_ptr(), rho_params), rsqrt_table
        return held[0]

    def by_triton(self, xs: torch.Tensor, n: int, weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Tuple[Count, Count, Count]]:
        """:meth:`fused` on the ``triton`` backend, statistics as device counts."""
        weight, bias = (None if p is None else p.contiguous() for p in (weight, bias))
        params = kernels.load_triton().coder_rows(  # the 1/sqrt split function, the z and rho coders
            xs.device, self.rsqrt.coder.kernel_params(torch.float32, False) + (self.rsqrt.target.lo,),
            *(c.row_params(torch.float32) for c in (self.z_coder, self.rho_coder)))
        out, stats = kernels.load_triton().norm(
            xs, n, weight, bias, params, torch.view_as_real(self.rsqrt.table(torch.float32, xs.device)),
            self.centered, self.eps, MIN_ROW_EXPONENT, self.element_span,
            int(self.z_coder.kernel_params(torch.float32, False)[4]), list(CODES).index(self.code))
        return out, (stats[0], stats[1], stats[2])

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps:g}, T={self.T}, split_bits={self.rsqrt.split_bits}, "
                f"code={self.code!r}, element_exponents={self.element_exponents}, "
                f"centered_codes={self.centered_codes}, " + super().extra_repr())


class SpikingLayerNorm(_SpikingNorm):
    """Spiking ``nn.LayerNorm`` (see :class:`_SpikingNorm` for the stages)."""

    centered, element_flops, row_flops = True, flops.LAYERNORM, flops.LAYERNORM_ROW

    def __init__(self, normalized_shape: Union[int, Sequence[int]], weight: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None, eps: float = 1e-5, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, *,
                 N: int = DEFAULT_N, split_bits: Optional[int] = None, code: str = DEFAULT_CODE,
                 element_exponents: bool = True, centered_codes: bool = True) -> None:
        super().__init__(normalized_shape, weight, bias, eps, T, mode, N, split_bits, code, element_exponents,
                         centered_codes)

    @classmethod
    def from_float(cls, float_op: object, *args: object, **options: object) -> "SpikingLayerNorm":
        """The spiking twin of ``float_op``: a LayerNorm module (``nn.LayerNorm``, timm's, Hugging
        Face's, ...; its shape, ``eps`` and the very same ``weight``/``bias``, checked to compute a
        LayerNorm) or ``F.layer_norm`` with the arguments it takes after its input
        (``normalized_shape, weight, bias, eps``). ``options``: ``T``, ``mode``, ``N``,
        ``split_bits``, ``code``, ``element_exponents``, ``centered_codes``."""
        if float_function(cls, float_op, (F.layer_norm,), (nn.Module,), "a LayerNorm module or F.layer_norm"):
            return cls(*args, **options)
        weight, bias, eps = norm_module_parts(float_op)
        shape = norm_shape(float_op)
        return check_twin(cls(shape, weight, bias, eps, **options), float_op, shape)


class SpikingRMSNorm(_SpikingNorm):
    """Spiking RMSNorm ``x / sqrt(mean(x^2) + eps) * weight`` (Llama); stages as :class:`_SpikingNorm`
    without the mean."""

    centered, element_flops, row_flops = False, flops.RMSNORM, flops.RMSNORM_ROW

    def __init__(self, hidden_size: Union[int, Sequence[int]], weight: Optional[torch.Tensor] = None,
                 eps: float = 1e-6, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, *, N: int = DEFAULT_N,
                 split_bits: Optional[int] = None, code: str = DEFAULT_CODE, element_exponents: bool = True,
                 centered_codes: bool = True) -> None:
        super().__init__(hidden_size, weight, None, eps, T, mode, N, split_bits, code, element_exponents,
                         centered_codes)

    @classmethod
    def from_float(cls, float_op: object, *args: object, **options: object) -> "SpikingRMSNorm":
        """The spiking twin of ``float_op``: an RMSNorm module (``nn.RMSNorm``, Hugging Face's
        ``LlamaRMSNorm`` with its ``variance_epsilon``, ...; checked to compute an RMSNorm) or
        ``F.rms_norm`` with the arguments it takes after its input (``normalized_shape, weight,
        eps``; ``eps=None`` is float32's machine epsilon, as ``F.rms_norm``'s). ``options`` as
        :meth:`SpikingLayerNorm.from_float`'s."""
        if float_function(cls, float_op, (F.rms_norm,), (nn.Module,), "an RMSNorm module or F.rms_norm"):
            shape, weight, eps = (list(args) + [None, None])[:3]
            return cls(shape, weight, torch.finfo(torch.float32).eps if eps is None else eps, **options)
        weight, _, eps = norm_module_parts(float_op)
        shape = norm_shape(float_op)
        return check_twin(cls(shape, weight, eps, **options), float_op, shape)


class SpikingGroupNorm(_SpikingNorm):
    """Spiking ``group_norm``: the stages of :class:`_SpikingNorm` over each of ``groups`` groups of the
    channels (dimension 1) and everything after them, then the per-channel ``weight``, ``bias``.
    ``groups = C`` is InstanceNorm; ``groups=None`` normalises each channel over the batch and the
    positions (BatchNorm with the statistics of the batch, its training form)."""

    centered, element_flops, row_flops = True, flops.LAYERNORM, flops.LAYERNORM_ROW

    def __init__(self, channels: int, groups: Optional[int], weight: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None, eps: float = 1e-5, T: int = DEFAULT_T, mode: str = DEFAULT_MODE, *,
                 N: int = DEFAULT_N, split_bits: Optional[int] = None, code: str = DEFAULT_CODE,
                 element_exponents: bool = True, centered_codes: bool = True) -> None:
        super().__init__(channels, weight, bias, eps, T, mode, N, split_bits, code, element_exponents, centered_codes)
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1
                                   or channels % groups):
            raise ValueError(f"groups must be None or a positive divisor of channels={channels}, got {groups!r}")
        self.channels, self.groups = channels, groups

    @classmethod
    def from_float(cls, float_op: object, *args: object, **options: object) -> "SpikingGroupNorm":
        """The spiking twin of ``float_op``: a norm module normalising with its input's statistics
        (:data:`GROUP_NORM_CLASSES`: ``nn.GroupNorm``; ``nn.InstanceNorm*d`` and ``nn.BatchNorm*d`` in
        training or without running statistics; its ``eps`` and the very same ``weight``/``bias``), or
        ``F.group_norm`` with the input's channel count and the arguments it takes after its input
        (``channels, num_groups, weight, bias, eps``), or ``F.batch_norm`` on the batch's statistics
        with ``channels, weight, bias, eps``. ``options`` as :meth:`SpikingLayerNorm.from_float`'s."""
        if float_function(cls, float_op, (F.group_norm, F.batch_norm), tuple(GROUP_NORM_CLASSES),
                          "a GroupNorm, InstanceNorm or BatchNorm module, F.group_norm or F.batch_norm"):
            return cls(*args, **options) if float_op is F.group_norm else cls(args[0], None, *args[1:], **options)
        read = GROUP_NORM_CLASSES.get(type(float_op))
        grouping = read(float_op) if read is not None else None
        if grouping is None:
            raise ValueError(f"SpikingGroupNorm.from_float: {type(float_op).__name__} normalises with running "
                             "statistics here (a linear map, not a norm of its input); give it training mode or "
                             "track_running_stats=False, or leave it to conversion as a linear layer")
        channels, groups = grouping
        return cls(channels, groups, float_op.weight, float_op.bias, float_op.eps, **options)

    def float_reference(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups is None:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        self.check_floating(x, "input")
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"SpikingGroupNorm expects input of shape [B, C={self.channels}, ...], got {tuple(x.shape)}")
        dtype = working_dtype(x, self.precision_digits)
        if self.groups is None:
            rows = x.movedim(1, 0).reshape(self.channels, -1).contiguous()
        else:
            rows = x.reshape(x.shape[0], self.groups, -1)
        out = self.normalize(rows, (-1,), rows.shape[-1], None, None)
        out = out.reshape(x.movedim(1, 0).shape).movedim(0, 1) if self.groups is None else out.reshape(x.shape)
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            out = out * self.weight.detach().to(dtype).reshape(shape)
        if self.bias is not None:
            out = out + self.bias.detach().to(dtype).reshape(shape)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, " + super().extra_repr()
