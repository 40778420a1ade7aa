"""Weight-input channel ranges chosen for the model's output (``fisher_ranges``): each channel's rate table
against the step-by-step simulation, the Lagrangian choice against brute force, and a converted model
that spends the calibrated ranges' synaptic events with less output error."""
import itertools
import logging

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.channel_ranges import (MULTIPLIERS, ChannelTable, aimed_multipliers,
                                                        allocate_channel_ranges, equal_events, totals)
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.ops import SpikingWeightInput


def identity_input(C: int, T: int, x: torch.Tensor) -> SpikingWeightInput:
    """A weight input on the identity layer (its output is the decoded input), calibrated on ``x``."""
    layer = nn.Linear(C, C, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(C))
    op = SpikingWeightInput(layer, T=T)
    op(x)
    op.finish_calibration()
    return op


def simulated(op: SpikingWeightInput, x: torch.Tensor):
    """The step-by-step simulation's output and spike count."""
    op.mode = "simulate"
    functional.reset_net(op)
    with torch.no_grad():
        out = op(x)
    return out, op.op_stats().spikes


@pytest.mark.parametrize("T", [4, 8])
def test_each_channels_rate_is_what_the_simulation_codes(T):
    """Per channel and multiplier, the rate table's mean squared error and spikes are the step-by-step
    simulation's on the same rows with the ranges scaled (an identity layer outputs the decoded input;
    its spikes are the meter's)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g) * torch.tensor([0.1, 1.0, 3.0, 0.5, 10.0, 1.0]) + 0.3
    op = identity_input(6, T, x)
    factors = (0.25, 1.0, 4.0)
    error, spikes = op.channel_rates(x, factors)
    assert error.shape == spikes.shape == (6, 3)
    calibrated = op.channel_ranges.clone()
    for j, f in enumerate(factors):
        op.channel_ranges = calibrated
        op.scale_channel_ranges(torch.full((6,), f, dtype=torch.float64))
        out, count = simulated(op, x)
        assert torch.allclose(error[:, j], (out.double() - x.double()).square().mean(0), rtol=1e-4, atol=1e-12)
        assert float(spikes[:, j].sum()) * x.shape[0] == pytest.approx(count, rel=1e-9)
    assert bool((error[:, 0] <= error[:, 2]).all()) and bool((spikes[:, 0] >= spikes[:, 2]).all())


def test_the_lagrangian_choice_is_the_brute_force_optimum_at_its_events():
    """Over every assignment of three channels' five options, none spends at most the chosen events with
    less weighted error (the Lagrangian's choices lie on the lower convex hull), and the choice for a
    target never spends more than it."""
    g = torch.Generator().manual_seed(1)
    tables = []
    for _ in range(3):
        events = torch.sort(torch.rand(1, 5, generator=g, dtype=torch.float64), descending=True).values * 100
        error = torch.sort(torch.rand(1, 5, generator=g, dtype=torch.float64)).values
        tables.append(ChannelTable([], torch.ones(1, dtype=torch.float64), error, events))
    options = list(itertools.product(range(5), repeat=3))

    def spent(choice):
        return [sum(float(t.error[0, c]) for t, c in zip(tables, choice)),
                sum(float(t.events[0, c]) for t, c in zip(tables, choice))]
    fewest, most = min(spent(c)[1] for c in options), max(spent(c)[1] for c in options)
    for share in (0.2, 0.5, 0.8):
        target = fewest + share * (most - fewest)
        choices = equal_events(tables, target)
        error, events = totals(tables, choices)
        assert events <= target
        assert all(e >= error - 1e-12 for e, s in map(spent, options) if s <= events)
    assert totals(tables, equal_events(tables, 0.5 * fewest))[1] == pytest.approx(fewest)  # none reaches it


def test_a_model_at_the_calibrated_events_errs_less():
    """A small Llama at T=4: the weight inputs' synaptic events on the calibration batches stay within
    2 % of the calibrated ranges' (the energy meter), the output's squared error against the ANN on
    them is smaller, and the report says what moved."""
    ann = build("llama", layers=2, hidden=32, heads=2, seed=0)
    calib = [make_batch("llama", 4, 32, seed=s, hidden=32) for s in (1, 2)]
    snns = {on: convert(ann, calib, T=4, fisher_ranges=on) for on in (False, True)}

    def measured(snn):
        error, events = 0.0, 0
        with torch.no_grad(), EnergyMeter(snn, snn.time_steps) as meter:
            for batch in calib:
                error += float((main_output(snn(**batch)).double() - main_output(ann(**batch)).double()).square().sum())
        events = sum(int(s.sops) for path, s in meter.counts.items()
                     if isinstance(snn.get_submodule(path), SpikingWeightInput))
        return error, events
    (error_off, events_off), (error_on, events_on) = measured(snns[False]), measured(snns[True])
    assert events_on == pytest.approx(events_off, rel=0.02)
    assert error_on < error_off
    attentions = [m for path, m in snns[True].named_modules() if path.endswith("self_attn")]
    assert len(attentions) == 2
    for attention in attentions:  # the query, key and value projections code one input: one set of ranges
        q, k, v = (getattr(attention, f"{n}_proj").channel_ranges for n in "qkv")
        assert torch.equal(q, k) and torch.equal(q, v)
        assert not torch.equal(q, snns[False].get_submodule(next(
            p for p, m in snns[True].named_modules() if m is attention)).q_proj.channel_ranges)
    assert snns[False].spiking_report.channel_ranges == "calibrated"
    assert "predicted output error x0." in snns[True].spiking_report.channel_ranges
    assert "weight-input channel ranges: chosen for the output" in str(snns[True].spiking_report)


def test_a_layer_the_output_does_not_depend_on_keeps_its_ranges():
    """The first layer of a plain MLP reads the raw input (no gradient there): its ranges stay; the
    second's move."""
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    calib = [torch.randn(64, 8) * torch.linspace(0.1, 3.0, 8) for _ in range(2)]
    off = convert(ann, calib, T=4, fisher_ranges=False)
    on = convert(ann, calib, T=4, fisher_ranges=True)
    assert torch.equal(on[0].channel_ranges, off[0].channel_ranges)
    assert not torch.equal(on[2].channel_ranges, off[2].channel_ranges)
    ratios = (on[2].channel_ranges.double() / off[2].channel_ranges.double()).tolist()
    assert all(min(abs(r / m - 1) for m in MULTIPLIERS) < 1e-6 for r in ratios)


def test_auto_chooses_them_for_a_model_returning_logits_only():
    """``'auto'`` (the default): a classifier's logits weigh its channels (ranges moved); a hidden-state
    output keeps the calibrated ranges, and the report says why."""
    calib = [make_batch("bert", 4, 12, seed=s) for s in (1, 2)]
    classifier = convert(build("bert", layers=1, hidden=32, heads=4, seed=0), calib, T=4)
    assert "chosen for the output" in classifier.spiking_report.channel_ranges
    llama = build("llama", layers=1, hidden=16, heads=2, seed=0)
    hidden = convert(llama, [make_batch("llama", 2, 8, seed=1, hidden=16)], T=4)
    assert hidden.spiking_report.channel_ranges.startswith("calibrated (fisher_ranges='auto'")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_fisher_ranges_names_the_option(value):
    ann = build("llama", layers=1, hidden=16, heads=2, seed=0)
    with pytest.raises(ValueError, match="fisher_ranges must be True, False or 'auto'"):
        convert(ann, [make_batch("llama", 2, 8, seed=1, hidden=16)], T=4, fisher_ranges=value)


def test_no_weight_input_leaves_nothing_to_choose():
    assert allocate_channel_ranges(nn.Sequential(nn.GELU()), [torch.randn(4, 3)]) is None


def test_float_gradients_at_an_input_are_the_anns_over_each_drawn_direction():
    """At a weight layer's input, the squared gradients summed over two draws of ``u`` are plain PyTorch's
    on the ANN for the same draws (standard normal for a hidden-state output, in the generator's order)."""
    from spikingjelly_mbe.conversion.gradients import float_gradients
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)).eval()
    calib = [torch.randn(16, 5)]
    snn = convert(ann, calib, T=8, fisher_ranges=False)
    snn[0].requires_grad_(False)
    before = [p.requires_grad for p in snn.parameters()]
    (found,) = list(float_gradients(snn, {"2": snn[2]}, calib, True, seed=4, directions=2))
    value, squares = found["2"]
    g = torch.Generator().manual_seed(4)
    hidden = torch.nn.functional.gelu(ann[0](calib[0])).detach().requires_grad_(True)
    out = ann[2](hidden)
    expected = sum(torch.autograd.grad((out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum(),
                                       hidden, retain_graph=True)[0].double().square() for _ in range(2))
    assert torch.allclose(value, hidden.detach())
    assert torch.allclose(squares, expected, rtol=1e-6)
    assert [p.requires_grad for p in snn.parameters()] == before and False in before  # restored


def mlp_and_batches():
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    return ann, [torch.randn(128, 16) for _ in range(2)]


def metered_on(snn, ann, calib):
    """The whole model's strict E_SNN/E_ANN on ``calib`` (the meter) and the output's squared error."""
    with torch.no_grad(), EnergyMeter(snn, snn.time_steps) as meter:
        error = sum(float((snn(x).double() - ann(x).double()).square().sum()) for x in calib)
    return meter.ratio(), error


def test_aimed_multipliers_leave_half_the_digits_over_the_calibrated_range():
    assert aimed_multipliers(4) == MULTIPLIERS
    assert aimed_multipliers(8)[0] == 0.25 and aimed_multipliers(8)[-1] == 16.0 and 1.0 in aimed_multipliers(8)
    assert len(aimed_multipliers(16)) == 21 and aimed_multipliers(16)[-1] == 256.0


def test_an_energy_budget_is_met_by_the_channel_ranges_alone():
    """With ``energy_by='ranges'``, ``energy_budget`` is one conversion at the nominal T whose channel ranges (no
    digit moved) spend the whole model's strict energy up to the budget on the calibration batches (the
    meter: within 5 % below it), each range its calibrated one times one of ``aimed_multipliers(T)``; a
    budget above the nominal energy buys less output error than the nominal ranges."""
    ann, calib = mlp_and_batches()
    nominal = convert(ann, calib, T=8, fisher_ranges=True)
    calibrated = convert(ann, calib, T=8, fisher_ranges=False)
    nominal_energy, nominal_error = metered_on(nominal, ann, calib)
    assert 0.17 < nominal_energy < 0.21
    for budget in (0.15, 0.2):
        snn = convert(ann, calib, T=8, energy_budget=budget, energy_by="ranges")
        energy, error = metered_on(snn, ann, calib)
        assert 0.95 * budget <= energy <= budget
        report = snn.spiking_report
        assert report.digit_allocation == {} and report.energy_budget == budget and report.energy_reached
        assert f"aimed at energy_budget={budget:g}" in report.channel_ranges
        assert set(report.digits["weight_input"]) == {8}
        for i in (2, 4):
            ratios = (snn[i].channel_ranges.double() / calibrated[i].channel_ranges.double()).tolist()
            assert all(min(abs(r / m - 1) for m in aimed_multipliers(8)) < 1e-6 for r in ratios)
        if budget > nominal_energy:
            assert error < nominal_error
        else:
            assert error > nominal_error


def test_a_budget_the_ranges_cannot_reach_allocates_the_digits(caplog):
    """Below what the widest multipliers reach (the first layer reads the raw input: its ranges stay), the
    digits are allocated instead (:mod:`~spikingjelly_mbe.conversion.allocation`), within the budget."""
    ann, calib = mlp_and_batches()
    with caplog.at_level(logging.INFO, logger="spikingjelly_mbe.conversion"):
        snn = convert(ann, calib, T=8, energy_budget=0.08, energy_by="ranges")
    assert "energy_budget=0.08: the channel ranges alone do not reach it" in caplog.text
    assert metered_on(snn, ann, calib)[0] <= 0.08
    assert snn.spiking_report.digit_allocation and min(snn.spiking_report.digit_allocation.values()) < 8
    line = snn.spiking_report.allocation_line()
    assert "(energy_budget=0.08; energy_by='ranges' fell short of it first (the ranges chosen for the output" in line
    assert "aimed at energy_budget=0.08: strict E_SNN/E_ANN" in str(snn.spiking_report)


def test_a_T_mapping_with_energy_by_ranges_keeps_each_types_digits(caplog):
    """With the ranges meeting the budget, ``T`` may be a mapping: the weight inputs at 8 digits (their ranges
    aimed), the activations at their 6; a budget they cannot reach is warned about and the closest kept (the
    digit allocation starts from one integer T)."""
    ann, calib = mlp_and_batches()
    T = {"default": 6, "weight_input": 8}
    snn = convert(ann, calib, T=T, energy_budget=0.15, energy_by="ranges")
    assert 0.95 * 0.15 <= metered_on(snn, ann, calib)[0] <= 0.15
    assert snn.spiking_report.digits == {"weight_input": {8: 3}, "activation": {6: 2}}
    with caplog.at_level(logging.WARNING, logger="spikingjelly_mbe.conversion"):
        floor = convert(ann, calib, T=T, energy_budget=0.02, energy_by="ranges")
    assert "energy_budget=0.02: the channel ranges reach no closer than" in caplog.text
    assert not floor.spiking_report.energy_reached and metered_on(floor, ann, calib)[0] > 0.02
    with pytest.raises(ValueError, match="give T as an integer.*or with energy_by='ranges'"):
        convert(ann, calib, T=T, energy_budget=0.15)


def test_the_digits_meet_an_energy_budget_unless_energy_by_ranges():
    """The default ``energy_by='digits'`` allocates the digits (the channel ranges at the calibrated events);
    ``'ranges'`` aims the ranges for any output under ``fisher_ranges='auto'`` (a hidden-state Llama here)."""
    ann = build("llama", layers=1, hidden=16, heads=2, seed=0)
    calib = [make_batch("llama", 2, 8, seed=1, hidden=16)]
    digits = convert(ann, calib, T=8, energy_budget=0.3)
    assert digits.spiking_report.digit_allocation and "aimed at" not in digits.spiking_report.channel_ranges
    ranges = convert(ann, calib, T=8, energy_budget=0.3, energy_by="ranges")
    assert "aimed at energy_budget=0.3" in ranges.spiking_report.channel_ranges


@pytest.mark.parametrize("options, message", [
    (dict(energy_by="range", energy_budget=0.2), "energy_by must be one of \\('digits', 'ranges'\\)"),
    (dict(energy_by="ranges"), "energy_by='ranges' says what meets energy_budget: give energy_budget too"),
    (dict(energy_by="ranges", energy_budget=0.2, fisher_ranges=False), "it needs fisher_ranges True or 'auto'"),
])
def test_bad_energy_by_names_the_option(options, message):
    ann, calib = mlp_and_batches()
    with pytest.raises(ValueError, match=message):
        convert(ann, calib, T=8, **options)
