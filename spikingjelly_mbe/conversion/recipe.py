"""``SpikingRecipe``: training-free conversion of any module tree (SpikingJelly ``ModuleConverter``),
deciding by what the model computes rather than by its class, with the operators of a registered
method (:data:`~.method.METHODS`); ``MBETransformerRecipe`` and ``ECMTRecipe`` fix the method."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import logging
import types
from typing import Any, Dict, Iterable, Optional, Set

import torch
import torch.nn as nn
from spikingjelly.activation_based.ann2snn import ModuleConversionRecipe, ModuleConverter

from .allocation import allocate, fidelity_batches
from .blocks import SpikingAttention
from .calibration import NEED_DATA, Batch, calibrate, measure_shifts, run_batch
from .channel_ranges import aim_channel_ranges, allocate_channel_ranges
from .gradients import returns_logits
from .hf_attention import BUILDING, use_spiking_attention
from .hf_experts import use_spiking_experts
from .interception import Session, is_opaque
from .fidelity import fitted_target, ranked, refit_span, site_errors
from .method import settings_at
from .options import RecipeOptions, reset_states
from .registry import EXPOSE, KEEP, ArchitectureRule, rule_for
from .report import ConversionReport, Entry, UnsupportedNonlinearityError, note_of
from .rotation import rotate
from .sites import SiteTable, needs_calibration
from ..ops.base import Calibrated
from ..ops.digits import Steps, digits_by_type, unmatched_patterns
from ..ops.precision import AUTO
from ..ops.layers import is_weight_layer
from ..ops.on_demand import MAX_FIT_ERROR, SMOOTHNESS_T, FittedOnDemand
from .structure import Replacement, apply, fingerprint_candidates, move_hooks, plan, record_inputs

log = logging.getLogger("spikingjelly_mbe.conversion")


class Intercepted:
    """The model's forward (an instance attribute over its class's): each call runs under its own
    :class:`Session` dispatching to ``table``. The session opens and closes inside the call, so
    ``torch.compile(model)`` traces it with the forward, in one frame; deep copies and pickles of the
    model carry it."""

    def __init__(self, table: SiteTable, opaque_ids: frozenset = frozenset()) -> None:
        self.table, self.opaque_ids = table, opaque_ids

    def attach(self, model: nn.Module) -> list:
        """Become ``model.forward`` (wrapping an instance-level forward it had); returns ``[self]``,
        whose :meth:`remove` restores it."""
        self.model, self.inner = model, model.__dict__.get("forward")
        model.forward = self
        # dynamo reads has_torch_function as false, so it traces the layer's fused fast path, no spiking operator
        self.table.untraced.update(f"{path}: nn.TransformerEncoderLayer" for path, m in model.named_modules()
                                   if isinstance(m, nn.TransformerEncoderLayer))
        return [self]

    def remove(self) -> None:
        if self.inner is None:
            del self.model.forward
        else:
            self.model.forward = self.inner

    @property
    def __signature__(self) -> inspect.Signature:
        """The wrapped forward's (Hugging Face's ``generate`` reads which arguments it takes)."""
        return inspect.signature(self.inner or types.MethodType(type(self.model).forward, self.model))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.table.untraced:
            return run_eagerly(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with Session(self.model, self.table, self.opaque_ids) as session:
            session.mark_inputs(args, kwargs)
            if self.inner is not None:
                return self.inner(*args, **kwargs)
            return type(self.model).forward(self.model, *args, **kwargs)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "opaque_ids": frozenset()}


@torch.compiler.disable(reason="the converted model makes calls on activations (F.pad, F.hardswish, "
                               "F.hardsigmoid) that dynamo does not hand to the run-time interception, or has an "
                               "nn.TransformerEncoderLayer, whose fused fast path dynamo takes; the spiking "
                               "operators there would compute in float, so torch.compile runs it eagerly "
                               "(model.forward.table.untraced says where)")
def run_eagerly(forward: Intercepted, *args: Any, **kwargs: Any) -> Any:
    """``forward.run`` outside every torch.compile trace (``fullgraph=True`` refuses it, naming why)."""
    return forward.run(*args, **kwargs)


def replayable(data: Iterable[Batch], limit: Optional[int]) -> Iterable[Batch]:
    """``data`` when it can be iterated again; a one-shot iterator's first ``limit`` batches as a list."""
    if iter(data) is data:
        return list(itertools.islice(data, limit))
    return data


def refuse_converted(ann: nn.Module) -> None:
    if getattr(ann, "spiking_report", None) is not None:
        raise ValueError("this model is already a converted spiking model (it has .spiking_report); convert the "
                         "original ANN instead")
    for path, m in ann.named_modules():
        if is_opaque(m):
            raise ValueError(f"this model already holds spiking operators (e.g. {path or '<root>'}: "
                             f"{type(m).__name__}); convert the original ANN instead")


class SpikingRecipe(RecipeOptions, ModuleConversionRecipe):
    """Replace every nonlinear operation of a model by spiking operators of the configured method,
    weights untouched.

    ``ModuleConverter(recipe).convert(model)`` returns a new model; ``model`` keeps working as the
    ANN. The steps follow SpikingJelly's lifecycle:

    * ``prepare``: checks, deep copy, eval, the ``rotate`` option's function-preserving rotation
      (:mod:`.rotation`);
    * ``insert_observers``: modules computing a catalog building block are found by class or by a
      fingerprint on the first batch; those that need operand ranges (rectifiers) are replaced now,
      the others after calibration; Hugging Face attention switches to the spiking
      ``AttentionInterface`` function; every forward from here runs under run-time interception;
    * ``calibrate``: the batches run; every nonlinear call and activation x activation product gets
      its spiking operator (attached to the module it runs in), products record their ranges
      (Eq. 9); whatever has no spiking operator is collected (an error unless
      ``allow_float_fallback``);
    * ``replace``: the remaining whole-module replacements (activations, norms, softmax);
    * ``finalize``: the report; the interception stays only if the model has call-level sites.
    """

    def convert_module(self, converter: ModuleConverter, ann: nn.Module) -> nn.Module:
        if self.ranges_take_budget() and self.calibration.data is not None:  # read more than once
            self.calibration = dataclasses.replace(
                self.calibration, data=replayable(self.calibration.data, self.calibration.num_batches))
        if self.config.digit_budget is not None or (self.config.energy_budget is not None
                                                    and not self.ranges_take_budget()):
            return self.allocate_digits(converter, ann)
        model = self.prepare(converter, ann)
        self.insert_observers(converter, model)
        self.calibrate(converter, model)
        self.replace(converter, model)
        snn = self.finalize(converter, model)
        if self.ranges_take_budget() and not snn.spiking_report.energy_reached:
            if not isinstance(self.config.T, int):  # the digit allocation starts from one integer T
                log.warning("energy_budget=%g: the channel ranges reach no closer than %s; pass a larger "
                            "energy_budget or fewer digits in T", self.config.energy_budget,
                            snn.spiking_report.channel_ranges)
                return snn
            log.info("energy_budget=%g: the channel ranges alone do not reach it (%s); the digits are allocated "
                     "instead", self.config.energy_budget, snn.spiking_report.channel_ranges)
            allocated = self.allocate_digits(converter, ann)
            allocated.spiking_report.ranges_fell_short = snn.spiking_report.channel_ranges
            return allocated
        return snn

    def ranges_take_budget(self) -> bool:
        """Whether the channel ranges meet ``energy_budget`` (``energy_by='ranges'``,
        :func:`.channel_ranges.aim_channel_ranges`); else the digits are allocated (:mod:`.allocation`)."""
        return getattr(self.settings, "energy_by", "digits") == "ranges"

    def allocate_digits(self, converter: ModuleConverter, ann: nn.Module) -> nn.Module:
        """``digit_budget`` or ``energy_budget``: conversions of ``ann`` at its nominal ``T`` and lower
        rungs on the same calibration batches, and the one with the per-site ``T`` they allocate
        (:mod:`.allocation`)."""
        if self.calibration.data is None:
            raise ValueError(NEED_DATA)
        batches = replayable(self.calibration.data, self.calibration.num_batches)
        calibration = dataclasses.replace(self.calibration, data=batches)

        def convert_at(T: Steps) -> nn.Module:
            recipe = type(self)(calibration, self.config.replace(T=T, digit_budget=None, energy_budget=None,
                                                                    energy_by="digits"))
            return ModuleConverter(recipe, device=converter.device).convert(ann)
        return allocate(self.config.T, self.config.digit_budget, self.config.split_bits, convert_at,
                        fidelity_batches(batches, self.calibration.num_batches), self.config.energy_budget)

    def prepare(self, converter: ModuleConverter, ann: nn.Module) -> nn.Module:
        refuse_converted(ann)
        if self.calibration.data is None:
            raise ValueError(NEED_DATA)
        self.report = ConversionReport()
        self.rule: Optional[ArchitectureRule] = rule_for(ann)
        model = copy.deepcopy(ann).eval().to(converter.device)
        self.report.rotation = rotate(model, self.config.rotate)
        return model

    def override(self, module: nn.Module) -> Optional[Replacement]:
        rule = self.rule.modules.get(type(module)) if self.rule is not None else None
        if rule is None or rule.phase == KEEP:
            return None
        return Replacement(lambda s: rule.build(module, s), rule.note, rule.phase)

    def insert_observers(self, converter: ModuleConverter, model: nn.Module) -> None:
        self.batches = replayable(self.calibration.data, self.calibration.num_batches)
        kept = {path: m for path, m in model.named_modules()
                if self.rule is not None and getattr(self.rule.modules.get(type(m)), "phase", None) == KEEP}
        candidates = {p: m for p, m in fingerprint_candidates(model).items() if p not in kept}
        inputs = {}
        if candidates:
            first = next(iter(self.batches), None)
            inputs = record_inputs(model, candidates, lambda: run_batch(model, first, converter.device))
        self.plan = plan(model, inputs, self.override)
        # a spiking input neuron in front of every weight layer
        self.plan.update({p: Replacement(lambda s, m=m: s.linear_input(m), self.settings.linear_input_note,
                                         "class") for p, m in model.named_modules()
                          if is_weight_layer(m) and not any(p.startswith(q + ".") for q in self.plan)})
        use_spiking_attention(model)
        use_spiking_experts(model)
        self.record(apply(model, self.plan, self.settings, lambda new, how: how.how == EXPOSE or needs_calibration(new)))
        for path, m in kept.items():
            self.report.kept.append(Entry(path, type(m).__name__, type(m).__name__, self.rule.modules[type(m)].note))
        self.kept_ids = frozenset(id(m) for m in kept.values())
        opaque = {id(model.get_submodule(p)) for p in self.plan} | self.kept_ids
        if self.rule is not None and self.rule.setup is not None:
            self.rule.setup(model)
        self.table = SiteTable(self.settings, self.report, self.allow_float_fallback)
        self.intercepted = Intercepted(self.table, frozenset(opaque))
        self.handles = self.intercepted.attach(model)
        self.reset_handle = model.register_forward_pre_hook(reset_states)  # no state leaks across batches

    def record(self, done: list) -> None:
        for path, old, new, how in done:
            self.report.replaced.append(Entry(path, type(old).__name__, type(new).__name__, note_of(new, how.note)))

    def calibrate(self, converter: ModuleConverter, model: nn.Module) -> None:
        paths = {id(m): p for p, m in model.named_modules()}
        token = BUILDING.set((self.settings, self.report, paths))
        try:
            calibrate(model, dataclasses.replace(self.calibration, data=self.batches), converter.device)
        finally:
            BUILDING.reset(token)
        self.restore_idle(model)
        unsupported = self.table.unsupported_calls()
        if unsupported and not self.allow_float_fallback:
            raise UnsupportedNonlinearityError(unsupported)
        for path, call in unsupported:  # 'sign (not smooth enough to fit: ...)': the call, and why it has no operator
            name, _, why = call.partition(" (")
            self.report.fallback.append(Entry(path, name, "float", why[:-1] if why else "no spiking operator for this call"))
        floating = {p for p, m in model.named_modules() if isinstance(m, FittedOnDemand) and (m.refused or m.outside_domain)}
        self.report.replaced = [e for e in self.report.replaced if e.path not in floating]  # listed in fallback

    def restore_idle(self, model: nn.Module) -> None:
        """Weight layers wrapped before calibration that no batch called (their parent reads the
        weights itself, e.g. ``nn.MultiheadAttention``'s ``out_proj``) go back as they were."""
        for path, m in list(model.named_modules()):
            if isinstance(m, Calibrated) and m.idle:
                parent, _, child = path.rpartition(".")
                move_hooks(m, m.layer)
                setattr(model.get_submodule(parent), child, m.layer)
                self.report.replaced = [e for e in self.report.replaced if e.path != path]
                self.report.kept.append(Entry(path, type(m.layer).__name__, type(m.layer).__name__,
                                              "weights read by its parent module, which never calls it"))

    def replace(self, converter: ModuleConverter, model: nn.Module) -> None:
        self.table.calibrating = False
        self.intercepted.opaque_ids = self.kept_ids  # the replacements are spiking modules, opaque by class
        self.record(apply(model, self.plan, self.settings))
        self.amend_notes(dict.fromkeys(self.table.narrow_fitted_activations(), "fitted on the calibrated input range"))
        self.note_coarse_fits(model)
        param = next(model.parameters(), None)
        device = param.device if param is not None else converter.device
        for path, m in model.named_modules():
            if isinstance(m, SpikingAttention) and type(m.softmax) is nn.Softmax:
                m.softmax = m.settings.softmax(-1).to(device)
                self.report.replaced.append(Entry(f"{path}.softmax", "Softmax", type(m.softmax).__name__, note_of(
                    m.softmax, "attention softmax from exp2-frac, reciprocal, products (Eq. 13)")))

    def amend_notes(self, notes: Dict[str, str]) -> None:
        """Appends ``notes[path]`` to the report's entry of each of their paths."""
        self.report.replaced = [dataclasses.replace(e, note=f"{e.note}; {notes[e.path]}") if e.path in notes else e
                                for e in self.report.replaced]

    def note_coarse_fits(self, model: nn.Module) -> None:
        """Functions fitted on demand kept although their fit errs beyond ``MAX_FIT_ERROR`` of their range at
        these digits (at ``SMOOTHNESS_T`` they fit: the digits' error, :meth:`.FittedOnDemand.fit`): their
        report entries say so, and one warning names their paths and the ``T`` key that gives them more digits."""
        coarse = {p: m.coarse for p, m in model.named_modules() if isinstance(m, FittedOnDemand) and m.coarse}
        if not coarse:
            return
        self.amend_notes(coarse)
        log.warning("%d function(s) fitted on demand err beyond %.0f%% of their range at these digits, the digits' "
                    "error (at T=%d they fit; spiking_report has each): %s. More digits for them lower it, e.g. "
                    "T={..., '%s:activation': %d} (docs/digits.md)", len(coarse), 100 * MAX_FIT_ERROR, SMOOTHNESS_T,
                    ", ".join(coarse), next(iter(coarse)), SMOOTHNESS_T)

    def choose_channel_ranges(self, model: nn.Module, converter: ModuleConverter) -> None:
        """``fisher_ranges``: the weight inputs' channel ranges chosen for the model's output at the calibrated
        ranges' synaptic events (:mod:`.channel_ranges`; ``'auto'``: when the model returns logits), or within
        ``energy_budget`` with ``energy_by='ranges'`` (for any output), their rounding shifts measured again."""
        wanted = getattr(self.settings, "fisher_ranges", False)
        if wanted is False:
            return
        batches = fidelity_batches(self.batches, self.calibration.num_batches)
        budget = self.config.energy_budget if self.ranges_take_budget() else None
        if wanted == AUTO and budget is None and not returns_logits(model, batches[0], converter.device):
            self.report.channel_ranges = ("calibrated (fisher_ranges='auto' chooses them for a model returning "
                                          "logits; fisher_ranges=True weighs any output)")
            return
        done = (allocate_channel_ranges(model, batches) if budget is None
                else aim_channel_ranges(model, batches, budget, self.settings.T))
        if budget is not None:
            self.report.energy_budget, self.report.energy_reached = budget, done is not None and done.reached
        if done is not None:
            self.report.channel_ranges = str(done)
            measure_shifts(model, self.batches, self.calibration.num_batches, converter.device)

    def measure_sites(self, model: nn.Module, converter: ModuleConverter, paths: Optional[Set[str]] = None) -> list:
        """Every replaced site's own error on the first calibration batches, until
        :data:`~.fidelity.FIDELITY_POSITIONS` positions (``paths``: those sites alone), worst first
        (:mod:`.fidelity`)."""
        modules = dict(model.named_modules())
        sites = {e.path: type(modules[e.path]).__name__ for e in self.report.replaced
                 if e.path in modules and (paths is None or e.path in paths)}

        def run() -> None:
            with torch.no_grad():
                for batch in fidelity_batches(self.batches, self.calibration.num_batches):
                    run_batch(model, batch, converter.device)
        return site_errors(model, sites, run)

    def refit_coarse_activations(self, model: nn.Module) -> Set[str]:
        """Fitted activation sites whose own error on the calibration batches says their fit is too
        coarse for the inputs they get (:func:`.fidelity.refit_span`) become one neuron fitted on
        ``[-s, s]`` around those inputs (beyond it clamped and counted); the paths of those that did."""
        refitted: Set[str] = set()
        for row in self.report.site_errors:
            old = model.get_submodule(row.path)
            span = refit_span(row, old)
            if span is None:
                continue
            param = next(old.parameters(), next(old.buffers(), None))
            new = settings_at(self.settings, row.path).fitted(fitted_target(old), span)
            new = new.to(param.device) if param is not None else new
            parent, _, name = row.path.rpartition(".")
            setattr(model.get_submodule(parent), name, new)
            self.table.swap(old, new)
            index = next(i for i, e in enumerate(self.report.replaced) if e.path == row.path)
            entry = self.report.replaced[index]
            self.report.replaced[index] = Entry(entry.path, entry.source, type(new).__name__,
                                                f"{entry.note}; refitted on [-{span:g}, {span:g}] (its own error "
                                                f"{row.relative_rms:.1e} on the calibration batches)")
            refitted.add(row.path)
        return refitted

    def finalize(self, converter: ModuleConverter, model: nn.Module) -> nn.Module:
        unmatched = unmatched_patterns(self.settings.T, (e.path for e in self.report.replaced))
        if unmatched:
            raise ValueError(f"T: the module-path key(s) {unmatched} match no operator this conversion built; "
                             f"its operators' paths include {[e.path for e in self.report.replaced][:5]} "
                             f"(fnmatch globs, e.g. 'model.layers.0.*')")
        if not self.table.sites and not self.table.unsupported:
            for handle in self.handles:
                handle.remove()  # nothing is decided per call: plain forwards, no interception cost
        self.report.float_operations = list(self.settings.float_ops)
        if self.settings.fully_spiking:
            self.choose_channel_ranges(model, converter)
            self.report.site_errors = self.measure_sites(model, converter)
            refitted = self.refit_coarse_activations(model)
            if refitted:  # a site's own error depends on its operator alone: measure the new ones only
                rows = [row for row in self.report.site_errors if row.path not in refitted]
                rows += self.measure_sites(model, converter, refitted)
                self.report.site_errors = ranked(rows)
        del self.batches, self.plan, self.handles
        self.report.digits = digits_by_type(model)
        if not self.settings.fully_spiking:
            self.reset_handle.remove()  # stepped from outside: the state lives across the T steps of one input
        return self.finish(self.settings.network(model))


class MBETransformerRecipe(SpikingRecipe):
    """:class:`SpikingRecipe` with MBE's operators (:class:`~spikingjelly_mbe.mbe.OpSettings`):
    ``ModuleConverter(MBETransformerRecipe(calibration=batches, T=16)).convert(model)`` is
    ``convert(model, batches, T=16)``."""

    method = "mbe"


class ECMTRecipe(SpikingRecipe):
    """:class:`SpikingRecipe` with ECMT's operators (:class:`~spikingjelly_mbe.ecmt.ECMTSettings`):
    ``ModuleConverter(ECMTRecipe(calibration=batches, T=8)).convert(model)`` is
    ``convert(model, batches, T=8, method="ecmt")``."""

    method = "ecmt"
