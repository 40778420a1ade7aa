"""MBE's settings and the spiking operator it builds for each site kind conversion finds: fitted MBE
neurons (Eq. 8), MBE_Id-coded operands and products (Eqs. 9-12), Softmax and the norms from range-reduced
neurons (Eq. 13). Every operator runs its ``T`` steps inside each forward (fully spike-driven)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import Activation, Params, get_activation
from ..fitting.kinds import get_kind
from ..ops import (FittedOnDemand, PiecewiseLinear, RectifiedActivation, SpikingActivation, SpikingEinsum,
                   SpikingGroupNorm, SpikingLayerNorm, SpikingMatmul, SpikingMaxPool2d, SpikingProduct,
                   SpikingRMSNorm, SpikingRoot, SpikingSoftmax, SpikingWeightInput)
from ..ops.activation import ACTIVATION_N
from ..ops.base import DEFAULT_MODE, DEFAULT_N, DEFAULT_T, MODES
from ..ops.coding import DEFAULT_CODE, check_code, code_levels
from ..ops.digits import OPERATOR_TYPES, Steps, check_T, has_patterns, resolved_at, steps_at, values_for
from ..ops.precision import AUTO, DEFAULT_BUDGET, Budget, check_budget
from ..ops.roots import root_function
from ..ops.routing import SpikingTopK
from .blocks import ChannelsLast, Clamp, Extremum, Greater, Power, Quotient, Rescaled, VectorNorm

SPLIT_TYPES = ("softmax", "norm", "root")  # the operator types that move split_bits digits into a table
OPERAND_TYPES = ("weight_input", "product", "matmul")  # the operator types coded in operand_code


def check_codes(code: str, operand_code: Optional[str], T: Steps) -> None:
    """``code`` and ``operand_code`` (``None``: ``code``) must name digit codes
    (:data:`~spikingjelly_mbe.ops.coding.CODES`) that hold the most digits ``T`` gives the operators each
    codes: ``operand_code`` the weight inputs, products and matmuls, ``code`` the others (all of them
    without ``operand_code``)."""
    check_code(code)
    others = tuple(kind for kind in OPERATOR_TYPES if operand_code is None or kind not in OPERAND_TYPES)
    code_levels(code, max(values_for(T, others)), "code")
    if operand_code is not None:
        check_code(operand_code, "operand_code")
        code_levels(operand_code, max(values_for(T, OPERAND_TYPES)), "operand_code")


ENERGY_BY = ("digits", "ranges")  # what meets an energy_budget: the per-site digits, or the channel ranges


def check_energy_by(energy_by: str, energy_budget: Optional[float], fisher_ranges: Union[bool, str]) -> None:
    """``energy_by`` must be one of :data:`ENERGY_BY`; ``'ranges'`` needs an ``energy_budget`` and channel
    ranges chosen for the output (``fisher_ranges`` not ``False``)."""
    if energy_by not in ENERGY_BY:
        raise ValueError(f"energy_by must be one of {ENERGY_BY} (what meets energy_budget: the per-site digits or "
                         f"the weight inputs' channel ranges), got {energy_by!r}")
    if energy_by == "ranges" and energy_budget is None:
        raise ValueError("energy_by='ranges' says what meets energy_budget: give energy_budget too, e.g. "
                         "energy_budget=0.15 (or leave energy_by at 'digits')")
    if energy_by == "ranges" and fisher_ranges is False:
        raise ValueError("energy_by='ranges' moves the channel ranges chosen for the output: it needs "
                         "fisher_ranges True or 'auto', got fisher_ranges=False (or pass energy_by='digits')")


def check_digit_budget(digit_budget: Optional[float], T: Steps, energy_budget: Optional[float] = None,
                       energy_by: str = "digits") -> None:
    """``digit_budget`` must be ``None`` or a finite number >= 0, ``energy_budget`` ``None`` or a
    finite number > 0, at most one of them given, and then ``T`` one integer (the nominal digits every
    site's error is measured against; a mapping too when the channel ranges meet the energy budget,
    ``energy_by='ranges'``)."""
    if digit_budget is None and energy_budget is None:
        return
    if digit_budget is not None and (isinstance(digit_budget, bool) or not isinstance(digit_budget, (int, float))
                                     or not 0.0 <= digit_budget < float("inf")):
        raise ValueError(f"digit_budget must be None (every site at T) or the tolerance >= 0 on the growth over T's "
                         f"of the output error the sites' own calibration errors add up to (its RMS at most "
                         f"1 + digit_budget times), e.g. 0.5; got {digit_budget!r}")
    if energy_budget is not None and (isinstance(energy_budget, bool) or not isinstance(energy_budget, (int, float))
                                      or not 0.0 < energy_budget < float("inf")):
        raise ValueError(f"energy_budget must be None (every site at T) or the whole-model strict E_SNN/E_ANN "
                         f"(Eq. 14) > 0 the allocation must reach on the calibration batches, e.g. 0.15; "
                         f"got {energy_budget!r}")
    if digit_budget is not None and energy_budget is not None:
        raise ValueError(f"give digit_budget (an error budget: fewest synaptic events within it) or energy_budget "
                         f"(an energy budget: least error within it), not both (got {digit_budget!r} and "
                         f"{energy_budget!r})")
    name = "digit_budget" if digit_budget is not None else "energy_budget"
    if isinstance(T, Mapping) and not (name == "energy_budget" and energy_by == "ranges"):
        raise ValueError(f"{name} allocates every site's digits from one nominal T: give T as an integer, "
                         f"e.g. T=8 (got the mapping {dict(T)!r}; pass a mapping without {name}"
                         + (", or with energy_by='ranges'" if name == "energy_budget" else "") + ")")


@dataclass(frozen=True)
class OpSettings:
    """``T`` timesteps, ``N`` bases per MBE neuron (Eq. 8) and the evaluation ``mode`` of every operator.

    ``T`` is one integer, or a mapping of digits per operator type and module path
    (``{"default": 4, "softmax": 6, "model.layers.0.*": 8}``, :mod:`~spikingjelly_mbe.ops.digits`):
    the conversion asks :meth:`at` for the settings of each site, and every builder takes the digits
    of its own operator type (:meth:`steps`).

    ``activation_N`` sets the bases of the element-wise fitted activations (GELU, SiLU, tanh,
    sigmoid) alone: they cover [-16, 16] with all their curvature, so they get more bases than the
    range-reduced neurons; ``activation_N=None`` uses ``N`` (the paper's setting with ``N=4``). Softmax and norms keep
    ``N``: their range-reduced neurons are already near exact. ``code`` is the digit code of every
    spike-coded operand (:data:`~spikingjelly_mbe.ops.coding.CODES`): ``'binary'`` (MBE_Id, Eq. 9)
    or ``'signed'`` (signed digits, the same values with fewer spikes). ``operand_code`` is the code of
    the weight layers' inputs, the products and the matmuls alone (``None``: ``code``); ``'ternary'``
    (balanced-ternary digits of weights ``3^(T-1-k)``) codes them to about ``1.58 T``
    binary digits in the same ``T`` steps, for more spikes: latency, not energy (docs/digits.md; at most
    ``T=20``, the weight inputs, products and matmuls beyond 10 in float64). ``budget`` sets the precision
    of every calibrated code (the weight layers' inputs, the products' operands) from calibration: its
    rounding noise is ``budget`` of the operand's RMS (:mod:`~spikingjelly_mbe.ops.precision`);
    ``'auto'`` (the default) takes each code's own from ``AUTO_BUDGETS`` (weight inputs ``2^-(3.5 + 5T/16)``,
    operands ``2^-9``); ``None`` codes every operand to ``T`` digits of its maximum. ``center_inputs`` codes each weight
    layer's input channels around their calibrated medians, the constant carried by the layer's bias
    (:class:`~spikingjelly_mbe.ops.SpikingWeightInput`). ``rectified_activations`` computes GELU and
    SiLU as an exact rectifier plus a fitted residual (:class:`~spikingjelly_mbe.ops.RectifiedActivation`,
    a range reduction; ``False``: one fitted neuron of the whole function). ``norm_exponents`` gives
    every element a norm codes its own exponent (:class:`~spikingjelly_mbe.ops.SpikingLayerNorm`;
    ``False``: the row's exponent alone). ``centered_codes`` codes Softmax's and the norms' values of known
    magnitude band (each element's mantissa, ``1/M``, ``1/sqrt(M)``) as a centre spike plus signed digits
    (:meth:`~spikingjelly_mbe.ops.coding.IdentityCoder.centred`; ``False``: ``T`` digits of ``[0, A]``).
    ``probability_exponents`` codes the attention probabilities (the context product's left operand) with
    an exponent per element as well, so the many small probabilities of a long row keep the code's digits
    instead of rounding to 0 on the grid of 1 (``False``: that grid).
    ``neuron`` is the neuron kind of the fitted activations (:data:`~spikingjelly_mbe.fitting.kinds.KINDS`:
    ``'mbe'``, Eq. 8, or ``'fs'``, one basis, which ignores ``activation_N``); the range-reduced neurons of
    Softmax and the norms and the functions fitted on demand stay MBE. ``bias_correction`` subtracts each
    weight layer's expected rounding shift ``W E[x_hat - x]``, measured on the calibration batches, from its bias
    (:class:`~spikingjelly_mbe.ops.SpikingWeightInput`; docs/bias-correction.md). ``fisher_ranges`` moves each
    weight input's channel ranges to where the model's output needs the spikes, at the calibrated ranges'
    synaptic events (:mod:`~spikingjelly_mbe.conversion.channel_ranges`; ``'auto'``, the default: when the
    model returns logits, whose Fisher information it weighs; ``True``: for any output; ``False``: the
    calibrated ranges). ``digit_budget``
    allocates the digits per site from calibration (:mod:`~spikingjelly_mbe.conversion.allocation`):
    sites lose digits (down to ``T / 2``) where that saves the most synaptic events per squared output
    error added (each site's own error weighted by the output's sensitivity to it), while the
    estimated output error's RMS on the calibration batches stays within ``1 + digit_budget`` of the
    integer ``T``'s; ``None`` (the default): every site at ``T``. ``energy_budget`` allocates them
    the other way round: sites lose digits (down to half of ``T`` times the budget's share of the
    nominal energy, at least to 3) in the same order until the whole-model strict ``E_SNN / E_ANN``
    (Eq. 14) on the calibration batches is at most ``energy_budget`` (the least estimated output
    error at that energy; a budget below what every site at its fewest digits reaches is warned
    about, that allocation kept). ``energy_by`` says what meets ``energy_budget``: ``'digits'`` (the default,
    the per-site digits above) or ``'ranges'``: one conversion at ``T`` whose weight inputs' channel ranges are
    chosen for the output (as ``fisher_ranges``, for any output) within the energy, each channel's range its
    calibrated one times a half-octave multiplier leaving at least ``T / 2`` digits
    (:func:`~spikingjelly_mbe.conversion.channel_ranges.aim_channel_ranges`); the digits are allocated when
    the ranges alone cannot reach the budget. With ``'ranges'``, ``T`` may be a mapping (e.g. ``{"default":
    6, "weight_input": 8}``: the other operators at fewer digits, the weight inputs' ranges aimed).
    """

    T: Steps = DEFAULT_T
    N: int = DEFAULT_N
    mode: str = DEFAULT_MODE
    activation_N: Optional[int] = ACTIVATION_N
    split_bits: Optional[int] = None  # Softmax/norm digits moved into a table (None: min(3, T - 1))
    code: str = DEFAULT_CODE
    operand_code: Optional[str] = None
    budget: Budget = DEFAULT_BUDGET
    center_inputs: bool = True
    rectified_activations: bool = True
    norm_exponents: bool = True
    centered_codes: bool = True
    probability_exponents: bool = True
    neuron: str = "mbe"
    bias_correction: bool = False
    fisher_ranges: Union[bool, str] = AUTO
    digit_budget: Optional[float] = None
    energy_budget: Optional[float] = None
    energy_by: str = "digits"

    def __post_init__(self) -> None:
        if isinstance(self.T, Mapping):
            object.__setattr__(self, "T", check_T(self.T))
        if self.operand_code is not None and self.operand_code == self.code:  # the same conversion as None
            object.__setattr__(self, "operand_code", None)

    @property
    def activation_bases(self) -> int:
        return self.N if self.activation_N is None else self.activation_N

    def steps(self, kind: str) -> int:
        """The digits of this site's operators of type ``kind`` (a key of
        :data:`~spikingjelly_mbe.ops.digits.OPERATOR_TYPES`)."""
        if has_patterns(self.T):
            raise ValueError(f"T has module-path patterns ({self.T!r}): take the settings of one site first, "
                             "settings.at(path)")
        return steps_at(self.T, kind)

    def at(self, path: str) -> "OpSettings":
        """The settings of the operators built at module ``path``: ``T``'s path patterns applied."""
        resolved = resolved_at(self.T, path)
        return self if resolved == self.T else dataclasses.replace(self, T=resolved)

    def validate(self) -> None:
        check_T(self.T)
        for name, value in (("N", self.N), ("activation_N", self.activation_bases)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_codes(self.code, self.operand_code, self.T)
        get_kind(self.neuron, "neuron")
        check_budget(self.budget)
        for name in ("center_inputs", "rectified_activations", "norm_exponents", "centered_codes", "probability_exponents",
                     "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_digit_budget(self.digit_budget, self.T, self.energy_budget, self.energy_by)
        if self.fisher_ranges not in (True, False, AUTO) or not isinstance(self.fisher_ranges, (bool, str)):
            raise ValueError(f"fisher_ranges must be True, False or 'auto' (the weight inputs' channel ranges chosen "
                             f"for the output when the model returns logits), got {self.fisher_ranges!r}")
        check_energy_by(self.energy_by, self.energy_budget, self.fisher_ranges)
        if self.split_bits is not None:
            lowest = min(values_for(self.T, SPLIT_TYPES))
            if isinstance(self.split_bits, bool) or not isinstance(self.split_bits, int) \
                    or not 0 <= self.split_bits < lowest:
                raise ValueError(f"split_bits must be None or an integer in [0, T={lowest}) (the fewest digits of "
                                 f"a Softmax, norm or root), got {self.split_bits!r}")

    fully_spiking: ClassVar[bool] = True
    float_ops: ClassVar[Tuple[str, ...]] = ()
    linear_input_note: ClassVar[str] = "weight layer driven by MBE_Id-coded input spikes (Eqs. 9, 12)"

    def coded_options(self, kind: str) -> Dict[str, Any]:
        """The options every spike-coded operator of type ``kind`` takes from these settings."""
        return dict(T=self.steps(kind), mode=self.mode, code=self.code)

    def operand_options(self, kind: str) -> Dict[str, Any]:
        """Options of an operator coding calibrated operands (products, matmuls, weight-layer inputs): in
        ``operand_code`` when given."""
        code = self.code if self.operand_code is None else self.operand_code
        return dict(self.coded_options(kind), budget=self.budget, code=code)

    def split_options(self, kind: str) -> Dict[str, Any]:
        """Options of an operator built on range-reduced neurons (Softmax, roots, norms)."""
        return dict(self.coded_options(kind), N=self.N, split_bits=self.split_bits)

    def norm_options(self) -> Dict[str, Any]:
        return dict(self.split_options("norm"), element_exponents=self.norm_exponents,
                    centered_codes=self.centered_codes)

    def activation(self, entry: Activation, params: Params) -> nn.Module:
        """The spiking module of an activation entry: its exact rectifier form, its own fitted neuron,
        or another entry's neuron with an input gain."""
        if entry.knots is not None:
            if not entry.knots(**params)[0]:
                return nn.Identity()
            return PiecewiseLinear.from_float((entry, params), **self.coded_options("activation"))
        if entry.fit is not None:
            return Rescaled(self.fitted(entry.fit), entry.gain)
        return self.fitted(entry.name)

    def narrowed(self, entry: Activation, params: Params, span: float) -> Optional[nn.Module]:
        """The entry's own fitted neuron refitted on ``[-span, span]`` (``None``: it has none)."""
        return self.fitted(entry.fitted_target, span) if entry.fitted_target is not None else None

    def norm(self, norm: Any, shape: Sequence[int], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             eps: float) -> nn.Module:
        """LayerNorm or RMSNorm on the trailing (or, ``norm.channels_first``, the channel) dimension."""
        if weight is not None and norm.weight_offset:
            weight = weight.detach() + norm.weight_offset
        op = self.layer_norm(shape, weight, bias, eps) if norm.centered else self.rms_norm(shape, weight, eps)
        return ChannelsLast(op) if norm.channels_first else op

    def fitted(self, target: str, span: Optional[float] = None) -> Union[SpikingActivation, RectifiedActivation]:
        """The activation ``target`` of :data:`~spikingjelly_mbe.activations.ACTIVATIONS` on one
        ``neuron`` per element (Eq. 8); ``span``: fitted on ``[-span, span]`` instead of its own domain.
        An activation with a linear tail (a ``residual_domain``) on its own domain is, with
        ``rectified_activations``, a rectifier plus the fitted residual."""
        entry = get_activation(target)
        options = dict(T=self.steps("activation"), N=self.activation_bases, mode=self.mode, kind=self.neuron)
        if span is None and self.rectified_activations and entry.residual_target is not None:
            return RectifiedActivation.from_float(entry, code=self.code, **options)
        return SpikingActivation.from_float(entry, span=span, **options)

    def piecewise(self, knots: Sequence[Tuple[float, float]], c0: float = 0.0, c1: float = 0.0) -> PiecewiseLinear:
        """``c0 + c1 x + sum w relu(x - t)`` on exact identity-neuron rectifiers (the rectifiers of the blocks)."""
        return PiecewiseLinear(knots, c0=c0, c1=c1, **self.coded_options("activation"))

    def max_pool(self, kernel_size, stride=None, padding=0) -> SpikingMaxPool2d:
        """``max_pool2d`` as a fold of ``m + relu(v - m)`` on rectifier neurons."""
        return SpikingMaxPool2d.from_float(F.max_pool2d, kernel_size, stride, padding, **self.coded_options("max_pool"))

    def network(self, model: nn.Module) -> nn.Module:
        """The converted model itself: every operator runs its ``T`` steps inside a forward."""
        return model

    def product(self) -> SpikingProduct:
        """Element-wise product of two spike-coded operands (Eqs. 9-12)."""
        return SpikingProduct.from_float(torch.mul, **self.operand_options("product"))

    def matmul(self) -> SpikingMatmul:
        """Matrix product of two spike-coded operands (Eqs. 9-12 summed over the inner index)."""
        return SpikingMatmul.from_float(torch.matmul, **self.operand_options("matmul"))

    def probabilities_matmul(self) -> SpikingMatmul:
        """The attention's probabilities times values: :meth:`matmul` with the probabilities (its left
        operand) at their element exponents when ``probability_exponents``."""
        return SpikingMatmul.from_float(torch.matmul, **self.operand_options("matmul"),
                                        element_exponents=(self.probability_exponents, False))

    def einsum(self, equation: str) -> SpikingEinsum:
        """``torch.einsum`` of two spike-coded operands, any subscripts (Eqs. 9-12 summed over the contraction)."""
        return SpikingEinsum.from_float(torch.einsum, equation, **self.operand_options("matmul"))

    def root(self, power: float) -> SpikingRoot:
        """``x^power`` for ``power`` in ``{-1, -1/2, 1/2}``: the IEEE-754 split with a range-reduced mantissa neuron."""
        return SpikingRoot.from_float(root_function(power), **self.split_options("root"))

    def quotient(self) -> Quotient:
        """``a / b`` of two activations: the spiking product of ``a`` and the reciprocal of ``b``."""
        return Quotient(self)

    def power(self, exponent: float) -> Power:
        """``x ** exponent`` (integer or half-integer): spiking products, reciprocal and square root."""
        return Power(self, exponent)

    def vector_norm(self, dim: Optional[Tuple[int, ...]], keepdim: bool, order: float = 2.0) -> VectorNorm:
        """The ``order``-norm (1, 2 or inf) over ``dim``: rectifiers, spiking squares, sums, the IEEE-754
        split's square root or the spiking top-1."""
        return VectorNorm(self, dim, keepdim, order)

    def greater(self) -> Greater:
        """``a > b`` of activations as the spike of a rectifier neuron driven by ``a - b``."""
        return Greater(self)

    def extremum(self, minimum: bool = False) -> Extremum:
        """``max(a, b)`` (``minimum``: ``min``) of two activations on one rectifier neuron."""
        return Extremum(self, minimum)

    def clamp(self, low: bool, high: bool) -> Clamp:
        """``clamp`` whose bounds are activations: a maximum and a minimum on rectifier neurons."""
        return Clamp(self, low, high)

    def on_demand(self, fn: Any, name: str) -> FittedOnDemand:
        """An element-wise function no catalog entry covers, on a neuron fitted to its calibrated input
        range (rectified when it has linear tails and ``rectified_activations``)."""
        return FittedOnDemand.from_float(fn, name, T=self.steps("activation"), N=self.activation_bases, mode=self.mode,
                                         code=self.code, rectify=self.rectified_activations)

    def group_norm(self, channels: int, groups: Optional[int], weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], eps: float) -> SpikingGroupNorm:
        """GroupNorm (``groups=C``: InstanceNorm; ``None``: BatchNorm on the batch's statistics) from the norm stages."""
        if groups is None:
            return SpikingGroupNorm.from_float(F.batch_norm, channels, weight, bias, eps, **self.norm_options())
        return SpikingGroupNorm.from_float(F.group_norm, channels, groups, weight, bias, eps, **self.norm_options())

    def topk(self, k: int, dim: int = -1) -> SpikingTopK:
        """The ``k`` largest along ``dim``, selected from the scores' spike trains (a counting winner-take-all)."""
        return SpikingTopK.from_float(torch.topk, k, dim, T=self.steps("topk"), mode=self.mode)

    def linear_input(self, layer: nn.Module) -> SpikingWeightInput:
        """``layer`` (a weight layer, weights untouched) driven by the MBE_Id code of its input (Eq. 9, 12)."""
        return SpikingWeightInput.from_float(layer, **self.operand_options("weight_input"), centered=self.center_inputs,
                                             bias_correction=self.bias_correction)

    def softmax(self, dim: int = -1) -> SpikingSoftmax:
        """Softmax from exp2 of the fractional part, a reciprocal and products (Eq. 13)."""
        return SpikingSoftmax.from_float(torch.softmax, dim, **self.split_options("softmax"),
                                         centered_codes=self.centered_codes)

    def layer_norm(self, shape: Sequence[int], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   eps: float) -> SpikingLayerNorm:
        """LayerNorm from squares, an rsqrt of the mantissa and products; the same gamma/beta tensors."""
        return SpikingLayerNorm.from_float(F.layer_norm, shape, weight, bias, eps, **self.norm_options())

    def rms_norm(self, shape: Sequence[int], weight: Optional[torch.Tensor], eps: float) -> SpikingRMSNorm:
        return SpikingRMSNorm.from_float(F.rms_norm, shape, weight, eps, **self.norm_options())
