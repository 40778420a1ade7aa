"""Digits allocated from calibration under an error budget (``digit_budget=``): the per-site ``T``
mapping of :mod:`~spikingjelly_mbe.ops.digits`, chosen by measurement, as ``budget=`` chooses each
code's range (:mod:`~spikingjelly_mbe.ops.precision`).

``convert(model, calib, T=8, digit_budget=0.25)``:

1. converts at the nominal ``T`` and at every lower rung down to half of it (:func:`rungs`: every
   operator type at a digit count the shipped library fits, the types that load no fitted neuron,
   :data:`FIT_FREE_TYPES`, at every count), each with the same calibration batches;
2. measures, on the calibration batches the per-site fidelity uses
   (:data:`~.fidelity.FIDELITY_POSITIONS`), every site's own error (``spiking_report.site_errors``,
   relative RMS against its float reference on the same inputs) and its strict synaptic events
   (SOPs, :class:`~spikingjelly_mbe.energy.EnergyMeter`);
3. weighs each site's squared own error by how much the model's output depends on it
   (:func:`sensitivities`: one backward pass per calibration batch through the float function, the
   Fisher direction for logits), so that the weighted sum estimates the output's squared error;
4. starts every site (an outermost replaced module path: a weight layer, an activation, a norm, an
   attention core with its products and Softmax) at ``T`` and, one site at a time, moves the site
   whose move to a candidate's digits adds the least weighted squared own error per SOP saved, until
   the estimated output error's RMS would grow beyond ``1 + digit_budget`` times the nominal one
   (:func:`choose`); the digits are written as ``'<path>:<type>'`` keys of a ``T`` mapping with
   ``'default': T``;
5. converts with that mapping and measures the sites again: when their inputs moved with the sites
   before them and the estimated error exceeds the budget, the allocation is repeated with its room
   shrunk by the factor the measured error overshot it (:func:`shrink`), at most
   :data:`CHECK_ROUNDS` times (then every site stays at ``T``, with a warning). The returned model
   always meets the budget on the calibration batches.

``convert(model, calib, T=8, energy_budget=0.15)`` asks the other way round: the least error at an
energy. The rungs go down to half the digits at which every site would meet the budget (were the
energy proportional to the digits), never below the fewest the library ships fits for, 3
(:func:`energy_floor`); step 4 moves sites in
the same order until the whole model's strict ``E_SNN / E_ANN`` (Eq. 14) predicted from the measured
SOPs is at most ``energy_budget``, and step 5 measures the converted allocation's energy on the
calibration batches and aims again (scaled by the factor it missed by, then, once allocations on
both sides of the budget were metered, where the line through the latest on each side meets it), keeping the allocation with
the most energy within the budget (:func:`within_energy`; a budget even the fewest digits miss is
warned about, and the closest allocation kept).

The result is exactly ``convert(model, calib, T=snn.spiking_report.digit_allocation)``; the
report's ``digits`` line shows the digits each operator type got.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..energy.report import E_AC, E_MAC, cost_ratio
from ..fitting.build_library import SHIPPED_T
from ..ops.digits import DEFAULT_KEY, OPERATOR_TYPES, Steps, operator_types, steps_of
from .calibration import Batch, metered_pass, positions_of
from .fidelity import FIDELITY_POSITIONS
from .gradients import float_gradients

log = logging.getLogger("spikingjelly_mbe.conversion")

# operator types that load no fitted neuron (their digits are a code's alone): any digit count is cheap to build
FIT_FREE_TYPES = ("weight_input", "product", "matmul", "max_pool", "topk")
LOWEST_RUNG = 0.5  # the fewest digits a site may get, as a share of the nominal T
CHECK_ROUNDS = 3  # conversions with a digit_budget allocation, each re-aimed when the last missed its budget
# conversions with an energy_budget allocation: each one conversion and one metered pass on the calibration batches
# (a fraction of the rungs' conversions), and the aims close in on the budget between the allocations either side of it
ENERGY_ROUNDS = 6
ENERGY_CLOSE = 0.02  # an energy_budget allocation this close below the budget (relative) is kept at once


def rungs(T: int, split_bits: Optional[int] = None, lowest: Optional[int] = None) -> Dict[int, Tuple[str, ...]]:
    """``{t: operator types}`` for every ``t`` from ``T - 1`` down to ``lowest`` (default
    ``ceil(T / 2)``, :data:`LOWEST_RUNG`; at least 1): the types a
    candidate conversion puts at ``t`` digits (all of them where the library ships fits at ``t``,
    :data:`~spikingjelly_mbe.fitting.build_library.SHIPPED_T`, else :data:`FIT_FREE_TYPES`; with a
    fixed ``split_bits``, the fitted types only above it)."""
    found: Dict[int, Tuple[str, ...]] = {}
    lowest = math.ceil(T * LOWEST_RUNG) if lowest is None else lowest
    for t in range(T - 1, max(1, lowest) - 1, -1):
        fitted_ok = t in SHIPPED_T and (split_bits is None or split_bits < t)
        found[t] = tuple(OPERATOR_TYPES) if fitted_ok else FIT_FREE_TYPES
    return found


def candidate_T(T: int, t: int, kinds: Tuple[str, ...]) -> Steps:
    """The ``T`` of the candidate conversion at rung ``t``: ``t`` itself when every type moves, else
    ``kinds`` at ``t`` and the rest at ``T``."""
    if set(kinds) == set(OPERATOR_TYPES):
        return t
    return {DEFAULT_KEY: T, **{kind: t for kind in kinds}}


def site_paths(model: nn.Module) -> List[str]:
    """The outermost replaced module paths of a conversion (its report's ``replaced`` entries not
    inside another; the root left out: it takes the default): the sites whose operators share one
    path's settings."""
    paths = [e.path for e in model.spiking_report.replaced if e.path]
    return [p for p in dict.fromkeys(paths) if not any(p.startswith(f"{q}.") for q in paths)]


def site_of(path: str, sites: Iterable[str]) -> Optional[str]:
    """The site a module path belongs to (itself or the site it lies in), ``None`` outside every site."""
    return next((s for s in sites if path == s or path.startswith(f"{s}.")), None)


@dataclass
class Measured:
    """One conversion on the calibration batches: each site's own error, its SOPs and the operator
    types (with their digits) it holds."""

    errors: Dict[str, float]
    sops: Dict[str, int]
    digits: Dict[str, Dict[str, int]]  # site -> {operator type: T}
    charged: Tuple[int, int, int] = (0, 0, 0)  # the whole model's strict (events, ANN operations, float operations)

    def energy(self, sops: Optional[Mapping[str, int]] = None) -> float:
        """The whole model's strict ``E_SNN / E_ANN`` (Eq. 14), with the sites' SOPs replaced by ``sops``
        (the events outside every site unchanged)."""
        events, ops, floats = self.charged
        if sops is not None:
            events += sum(sops.values()) - sum(self.sops[site] for site in sops)
        return cost_ratio(events, ops, "fp32", floats)

    def sops_for(self, energy: float) -> float:
        """The sites' total SOPs at which the whole model's strict energy (:meth:`energy`) is ``energy``."""
        events, ops, floats = self.charged
        return (energy * ops * E_MAC - floats * E_MAC) / E_AC - events + sum(self.sops.values())


def fidelity_batches(batches: Iterable[Batch], limit: Optional[int]) -> List[Batch]:
    """The first calibration batches, up to :data:`~.fidelity.FIDELITY_POSITIONS` positions (those the
    per-site errors are measured on)."""
    chosen, positions = [], 0
    for batch in itertools.islice(batches, limit):
        if positions >= FIDELITY_POSITIONS:
            break
        chosen.append(batch)
        positions += positions_of(batch)
    return chosen


def measure(snn: nn.Module, sites: List[str], batches: List[Batch]) -> Measured:
    """Own errors from ``snn``'s report, and SOPs per site over ``batches`` under the energy meter."""
    meter = metered_pass(snn, batches, snn.time_steps)
    sops: Dict[str, int] = dict.fromkeys(sites, 0)
    for path, stats in meter.counts.items():
        site = site_of(path, sites)
        if site is not None:
            sops[site] += int(stats.sops)
    digits: Dict[str, Dict[str, int]] = {site: {} for site in sites}
    for path, kind in operator_types(snn).items():
        site = site_of(path, sites)
        if site is not None:
            digits[site][kind] = steps_of(snn.get_submodule(path))
    errors = {row.path: row.relative_rms for row in snn.spiking_report.site_errors}
    return Measured(errors, sops, digits, meter.charged(list(meter.counts)))


def sensitivities(snn: nn.Module, sites: List[str], batches: List[Batch], seed: int = 0) -> Dict[str, float]:
    """Per site ``s``, the weight ``w_s`` of its squared own relative error ``r_s^2`` in the model's
    output error: ``w_s r_s^2`` is the expected squared first-order change of the output when the
    site's output ``y_s`` carries an error of relative RMS ``r_s`` spread over its elements,
    ``w_s = sum(g_s^2) * sum(y_s^2) / numel(y_s)`` over ``batches``, where ``g_s`` is the gradient at
    ``y_s`` of ``<output, u>`` for a random output direction ``u`` (:func:`~.gradients.float_gradients`:
    the Fisher direction for logits, standard normal for hidden states). A site its output does not
    depend on weighs 0."""
    grads, squares, elements = dict.fromkeys(sites, 0.0), dict.fromkeys(sites, 0.0), dict.fromkeys(sites, 0)
    for found in float_gradients(snn, {p: snn.get_submodule(p) for p in sites}, batches, False, seed):
        for path, (y, grad_squares) in found.items():
            grads[path] += float(grad_squares.sum())
            squares[path] += float(y.double().square().sum())
            elements[path] += y.numel()
    return {s: grads[s] * squares[s] / elements[s] if elements[s] else 0.0 for s in sites}


Option = Tuple[float, int, Dict[str, int]]  # (own error, SOPs, {operator type: T}) of one site


def squared_error(errors: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The output error the sites' own relative errors add up to: the sum over the sites of
    ``weights`` (:func:`sensitivities`) of ``w_s r_s^2`` (a site not measured adds 0)."""
    return sum(weight * errors.get(site, 0.0) ** 2 for site, weight in weights.items())


def room(nominal: Measured, tolerance: float, weights: Mapping[str, float]) -> float:
    """The weighted squared error the allocation may add: the output error's RMS
    (:func:`squared_error`) may grow by ``1 + tolerance``."""
    return ((1.0 + tolerance) ** 2 - 1.0) * squared_error(nominal.errors, weights)


def choose(nominal: Measured, candidates: Mapping[int, Measured], allowed: float,
           weights: Mapping[str, float], sops_target: Optional[float] = None) -> Dict[str, Dict[str, int]]:
    """Per site, the operator types' digits: every site starts at the nominal ones; one at a time, the
    move to a candidate's digits with fewer SOPs that adds the least weighted squared own error
    (``w_s r_s^2``, :func:`squared_error`) per SOP saved, while the added error stays within
    ``allowed`` (:func:`room`) and, given ``sops_target``, until the sites' SOPs are at most it."""
    current: Dict[str, Option] = {s: (nominal.errors.get(s, 0.0), nominal.sops[s], d) for s, d in nominal.digits.items()}
    options = {s: [(m.errors[s], m.sops[s], m.digits[s]) for m in candidates.values()
                   if s in m.errors and m.digits.get(s) not in (None, current[s][2])] for s in current}
    while sops_target is None or sum(option[1] for option in current.values()) > sops_target:
        best: Optional[Tuple[float, str, Option, float]] = None
        for site, (error, sops, _) in current.items():
            weight = weights.get(site, 0.0)
            for option in options[site]:
                added, saved = weight * (option[0] ** 2 - error ** 2), sops - option[1]
                if saved > 0 and added <= allowed and (best is None or added / saved < best[0]):
                    best = (added / saved, site, option, added)
        if best is None:
            break
        _, site, option, added = best
        current[site] = option
        allowed -= added
    return {site: option[2] for site, option in current.items()}


def measured_at(nominal: Measured, candidates: Mapping[int, Measured], site: str, digits: Mapping[str, int]) -> Measured:
    """The conversion that measured ``site`` at ``digits``: the nominal one or a rung's."""
    if digits == nominal.digits[site]:
        return nominal
    return next(m for m in candidates.values() if site in m.errors and m.digits.get(site) == digits)


def predicted(nominal: Measured, candidates: Mapping[int, Measured], chosen: Mapping[str, Mapping[str, int]],
              weights: Mapping[str, float]) -> float:
    """The weighted squared error a choice adds by the sites' own errors measured one rung at a time
    (what :func:`choose` spent of its room)."""
    errors = {site: measured_at(nominal, candidates, site, digits).errors.get(site, 0.0)
              for site, digits in chosen.items()}
    return squared_error(errors, weights) - squared_error(nominal.errors, weights)


def shrink(asked: float, room: float, added: float) -> float:
    """The room to ask for after an allocation predicted to add ``asked`` weighted squared error added
    ``added`` once converted, where the budget is ``room``: ``asked room / added``. The sites' inputs
    move with the sites before them, which amplifies what each adds by about ``added / asked``; at that
    amplification the next allocation adds ``room``. It only reaches zero when the choice was predicted
    to add nothing (subtracting the overshoot instead asks for nothing as soon as it exceeds the room)."""
    return max(asked, 0.0) * room / added


def as_mapping(T: int, chosen: Mapping[str, Mapping[str, int]]) -> Dict[str, int]:
    """The ``T`` mapping of a choice: ``'default': T`` and ``'<path>:<type>'`` for every operator type
    of a site given other digits."""
    mapping: Dict[str, int] = {DEFAULT_KEY: T}
    for site, digits in chosen.items():
        mapping.update({f"{site}:{kind}": t for kind, t in digits.items() if t != T})
    return mapping


def energy_floor(T: int, share: float) -> int:
    """The lowest rung of an ``energy_budget`` allocation that must bring the energy to ``share`` of the
    nominal ``T``'s: half of ``share T`` (the digits at which every site would meet it, were the energy
    proportional to the digits), and at least the fewest digits the library ships fits for (3)."""
    return max(min(SHIPPED_T), math.floor(share * T * LOWEST_RUNG))


Allocation = Tuple[nn.Module, Dict[str, int]]  # a converted model and the T mapping it was converted with


def within_error(T: int, tolerance: float, reference: nn.Module, nominal: Measured, candidates: Mapping[int, Measured],
                 weights: Mapping[str, float], convert_at: Callable[[Steps], nn.Module]) -> Allocation:
    """``digit_budget``: the fewest SOPs while the estimated output error's RMS stays within
    ``1 + tolerance`` of the nominal one, rechecked on the converted allocation (:func:`shrink`)."""
    budget = allowed = room(nominal, tolerance, weights)
    start = squared_error(nominal.errors, weights)
    for _ in range(CHECK_ROUNDS):
        chosen = choose(nominal, candidates, allowed, weights)
        mapping = as_mapping(T, chosen)
        if len(mapping) == 1:
            return reference, mapping
        snn = convert_at(mapping)
        measured = squared_error({row.path: row.relative_rms for row in snn.spiking_report.site_errors}, weights)
        if measured <= start + budget:
            return snn, mapping
        allowed = shrink(predicted(nominal, candidates, chosen, weights), budget, measured - start)
    log.warning("digit_budget=%g: after %d allocations the output error estimated from the sites' own errors "
                "still exceeded the budget on the calibration batches; every site stays at T=%d",
                tolerance, CHECK_ROUNDS, T)
    return reference, {DEFAULT_KEY: T}


def predicted_sops(nominal: Measured, candidates: Mapping[int, Measured], chosen: Mapping[str, Mapping[str, int]]) -> int:
    """The sites' SOPs of a choice, each site's as measured at its digits one rung at a time."""
    return sum(measured_at(nominal, candidates, site, digits).sops[site] for site, digits in chosen.items())


Reached = Tuple[float, float]  # (aimed energy, metered energy) of one converted allocation


def next_aim(aim: float, reached: float, energy_budget: float, under: Optional[Reached],
             over: Optional[Reached]) -> float:
    """The energy the next allocation aims at, after one aimed at ``aim`` metered ``reached``: once an
    allocation below the budget and one above it were metered (``under``, ``over``: the latest on each
    side, :func:`narrowed`), the aim at which the line through them meets the budget (the metered energy rises with the aim,
    about linearly between two near aims); before that the aim scaled by the factor it missed by."""
    if under is None or over is None:
        return aim * energy_budget / reached
    (aim_under, low), (aim_over, high) = under, over
    return aim_under + (energy_budget - low) * (aim_over - aim_under) / (high - low)


def narrowed(under: Optional[Reached], over: Optional[Reached], aim: float, reached: float, energy_budget: float,
             repeated: bool) -> Tuple[Optional[Reached], Optional[Reached]]:
    """The ends of :func:`next_aim`'s line after an allocation aimed at ``aim`` metered ``reached``: it
    replaces the end on its side of the budget (``under`` or ``over``; once both exist its aim lies between
    theirs). When it fell on the same side as the one before it (``repeated``), the other end's metered
    energy moves halfway to the budget (regula falsi's Illinois rule), so that the next line does not creep
    up on the budget from one side."""
    if reached <= energy_budget:
        under = (aim, reached)
        if repeated and over is not None:
            over = (over[0], (over[1] + energy_budget) / 2)
    else:
        over = (aim, reached)
        if repeated and under is not None:
            under = (under[0], (under[1] + energy_budget) / 2)
    return under, over


def within_energy(T: int, energy_budget: float, reference: nn.Module, nominal: Measured,
                  candidates: Mapping[int, Measured], weights: Mapping[str, float],
                  convert_at: Callable[[Steps], nn.Module], metered: Callable[[nn.Module], float]) -> Allocation:
    """``energy_budget``: the least estimated output error at a whole-model strict energy of at most
    ``energy_budget`` (:meth:`Measured.energy`), rechecked on the converted allocation (``metered``:
    its strict energy on the calibration batches): its sites' inputs move with the sites before them,
    so the measured energy differs from the prediction; each next allocation aims where the
    allocations metered so far put the budget (:func:`next_aim`, :func:`narrowed`; it moves at least one more site when
    that gives the same choice as one over the budget), at most :data:`ENERGY_ROUNDS` conversions; the
    one with the most energy within the budget is kept (one within :data:`ENERGY_CLOSE` of it ends
    the search). Warns, keeping the last allocation, when none meets the budget."""
    aim, tried, best, last, exhausted = energy_budget, set(), None, None, False
    under: Optional[Reached] = None
    over: Optional[Reached] = None
    previous: Optional[bool] = None  # whether the last allocation metered within the budget
    for _ in range(ENERGY_ROUNDS):
        chosen = choose(nominal, candidates, math.inf, weights, nominal.sops_for(aim))
        mapping = as_mapping(T, chosen)
        if last is not None and mapping == last[2]:  # the re-aim fell inside the same greedy move
            if last[0] <= energy_budget:
                break
            chosen = choose(nominal, candidates, math.inf, weights, predicted_sops(nominal, candidates, chosen) - 1)
            mapping = as_mapping(T, chosen)
        key = tuple(sorted(mapping.items()))
        if key in tried:  # no move is left: every site at its fewest digits
            exhausted = True
            break
        tried.add(key)
        snn = reference if len(mapping) == 1 else convert_at(mapping)
        last = (metered(snn), snn, mapping)
        log.info("energy_budget=%g: aimed at %.4g, the allocation reaches %.4g", energy_budget, aim, last[0])
        if last[0] <= energy_budget and (best is None or last[0] > best[0]):
            best = last
        if energy_budget * (1.0 - ENERGY_CLOSE) <= last[0] <= energy_budget:
            break
        within = last[0] <= energy_budget
        under, over = narrowed(under, over, aim, last[0], energy_budget, within == previous)
        previous = within
        aim = next_aim(aim, last[0], energy_budget, under, over)
    if best is not None:
        return best[1], best[2]
    log.warning("energy_budget=%g: the closest allocation tried reaches a strict E_SNN/E_ANN of %.4g on the "
                "calibration batches (%s); pass a larger energy_budget", energy_budget, last[0],
                "no site can lose another digit" if exhausted else f"after {ENERGY_ROUNDS} conversions")
    return last[1], last[2]


def allocate(T: int, tolerance: Optional[float], split_bits: Optional[int], convert_at: Callable[[Steps], nn.Module],
             batches: List[Batch], energy_budget: Optional[float] = None) -> nn.Module:
    """The conversion of :mod:`this module <.allocation>`: ``convert_at(T)`` converts the model with
    every other option fixed; ``batches``: the calibration batches the per-site errors are measured
    on; ``tolerance`` (``digit_budget``) or ``energy_budget``. Returns the converted model, its report
    carrying ``digit_allocation``, ``digit_budget`` and ``energy_budget``."""
    reference = convert_at(T)
    sites = site_paths(reference)
    nominal = measure(reference, sites, batches)
    if energy_budget is not None and nominal.energy() <= energy_budget:
        return record(reference, {DEFAULT_KEY: T}, tolerance, energy_budget)
    lowest = None if energy_budget is None else energy_floor(T, energy_budget / nominal.energy())
    candidates = {t: measure(convert_at(candidate_T(T, t, kinds)), sites, batches)
                  for t, kinds in rungs(T, split_bits, lowest).items()}
    weights = sensitivities(reference, sites, batches)
    if energy_budget is None:
        snn, mapping = within_error(T, tolerance, reference, nominal, candidates, weights, convert_at)
    else:
        snn, mapping = within_energy(T, energy_budget, reference, nominal, candidates, weights, convert_at,
                                     lambda model: measure(model, sites, batches).energy())
    return record(snn, mapping, tolerance, energy_budget)


def record(snn: nn.Module, mapping: Dict[str, int], tolerance: Optional[float], energy_budget: Optional[float],
           ) -> nn.Module:
    """``snn`` with its report carrying the allocated ``mapping`` and the budget that chose it."""
    snn.spiking_report.digit_allocation = mapping
    snn.spiking_report.digit_budget, snn.spiking_report.energy_budget = tolerance, energy_budget
    return snn
