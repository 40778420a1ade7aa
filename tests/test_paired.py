"""The loss's paired 95 % confidence interval (``spikingjelly_mbe.models.paired``): Student's quantile
against the published table, the interval against the textbook paired t-interval, its coverage on
draws of known truth, and the per-unit sums of real tasks against the summed metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikingjelly_mbe.models.evaluate import next_token_nll
from spikingjelly_mbe.models.paired import loss_interval, t_quantile_975, unit_sums
from spikingjelly_mbe.models.tasks import EvalBatch, EvalTask, metric_loss, metric_value, paired, tally

# Student's t 0.975 quantiles, as printed in statistical tables (degrees of freedom: value)
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 10: 2.2281, 15: 2.1314, 30: 2.0423,
           120: 1.9799}


def fold(parts):
    out = {}
    for sums in parts:
        for k, v in sums.items():
            out[k] = out.get(k, 0.0) + v
    return out


@pytest.mark.parametrize("dof", sorted(T_TABLE))
def test_the_t_quantile_matches_the_published_table(dof):
    assert t_quantile_975(dof) == pytest.approx(T_TABLE[dof], abs=1e-4)


def test_the_accuracy_interval_is_the_paired_t_interval_folded_over_batches():
    """Sixteen items in three batches: the folded sums give the textbook interval
    ``100 (mean d -+ t_15 s / sqrt(16))`` of the per-item differences of correctness."""
    rng = np.random.default_rng(0)
    ann = rng.random(16) < 0.9
    snn = np.where(rng.random(16) < 0.8, ann, ~ann)
    d = ann.astype(float) - snn.astype(float)
    parts = [unit_sums(torch.tensor(d[s]), torch.ones(len(d[s]))) for s in (slice(0, 5), slice(5, 11), slice(11, 16))]
    lo, hi = loss_interval("accuracy", fold(parts))
    half = T_TABLE[15] * d.std(ddof=1) / math.sqrt(16)
    assert (lo, hi) == pytest.approx((100 * (d.mean() - half), 100 * (d.mean() + half)), rel=1e-3)
    assert lo < 100 * d.mean() < hi


def test_windows_of_equal_length_give_the_t_interval_of_their_mean_differences_through_exp():
    """Perplexity: with every window scoring ``m`` tokens the ratio estimator is the t-interval of the
    windows' mean NLL differences, and the loss is ``100 (exp(.) - 1)`` at its ends."""
    rng = np.random.default_rng(1)
    per_window = rng.normal(0.05, 0.03, size=8)  # mean NLL lost per token, 8 windows of 127 tokens
    lost = torch.tensor(per_window * 127)
    lo, hi = loss_interval("perplexity", unit_sums(lost, torch.full((8,), 127.0)))
    half = 2.3646 * per_window.std(ddof=1) / math.sqrt(8)  # t_7's 0.975 quantile, from the table
    mean = per_window.mean()
    assert (lo, hi) == pytest.approx((100 * math.expm1(mean - half), 100 * math.expm1(mean + half)), rel=1e-3)


@pytest.mark.parametrize("metric", ["accuracy", "perplexity"])
def test_the_interval_covers_the_true_loss_in_95_of_100_draws(metric):
    """Coverage, the interval's definition: 2,000 held-out sets drawn with a known loss (items lost
    with known probabilities; windows of unequal lengths whose tokens lose a known mean NLL), and
    the true loss inside the interval in 93-97 % of them."""
    rng = np.random.default_rng(2)
    inside = 0
    for _ in range(2000):
        if metric == "accuracy":  # an item is lost w.p. 0.06 and won back w.p. 0.03: true loss 3 points
            u = rng.random(200)
            d, n, truth = (u < 0.06).astype(float) - (u > 0.97).astype(float), np.ones(200), 3.0
        else:  # windows of 20-128 tokens, each window's tokens shifted by its own mean around 0.04
            n = rng.integers(20, 129, size=30).astype(float)
            d = np.array([rng.normal(0.04 + s, 0.5, size=int(k)).sum() for s, k in zip(rng.normal(0, 0.02, 30), n)])
            truth = 100 * math.expm1(0.04)
        lo, hi = loss_interval(metric, unit_sums(torch.tensor(d), torch.tensor(n)))
        inside += lo <= truth <= hi
    assert 0.93 <= inside / 2000 <= 0.97


def test_no_interval_without_units_or_for_the_ann_relative_metrics():
    assert loss_interval("agreement", unit_sums(torch.ones(5), torch.ones(5))) is None
    assert loss_interval("accuracy", unit_sums(torch.ones(1), torch.ones(1))) is None
    assert loss_interval("accuracy", {}) is None
    with pytest.raises(ValueError, match="dof"):
        t_quantile_975(0)


def test_a_task_s_paired_sums_add_up_to_its_metrics():
    """Through :func:`paired` on real tallies: the summed differences reproduce ``metric_loss`` of the
    metrics built from :func:`tally` (accuracy from a probe head's top-1; perplexity from
    ``next_token_nll``'s summed cross-entropy), and the interval brackets the loss."""
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    task = EvalTask("probe", torch.nn.Identity(), "accuracy", [], [], lambda o, i: o, head)
    batch = EvalBatch(torch.randn(40, 6), torch.randint(0, 3, (40,)))
    ann, snn = batch.inputs, batch.inputs + 0.7 * torch.randn(40, 6)
    sums = paired(task, batch, ann, snn)
    loss = metric_loss("accuracy", metric_value("accuracy", tally(task, batch, ann), {}),
                       metric_value("accuracy", tally(task, batch, snn), {}))
    assert 100 * sums["pair_d"] / sums["pair_n"] == pytest.approx(loss, abs=1e-9) and sums["pair_units"] == 40
    lo, hi = loss_interval("accuracy", sums)
    assert lo <= loss <= hi

    lm = EvalTask("lm", torch.nn.Identity(), "perplexity", [], [], lambda o, i: o)
    ids = torch.randint(0, 11, (3, 9))
    batch = EvalBatch({"input_ids": ids})
    ann = torch.randn(3, 9, 11)
    snn = ann + 0.5 * torch.randn(3, 9, 11)
    sums = paired(lm, batch, ann, snn)
    (a, count), (s, _) = next_token_nll(ann, ids), next_token_nll(snn, ids)
    assert (sums["pair_n"], sums["pair_units"]) == (count, 3)
    assert sums["pair_d"] == pytest.approx(s - a, rel=1e-5)
    ppl_loss = metric_loss("perplexity", math.exp(a / count), math.exp(s / count))
    assert 100 * math.expm1(sums["pair_d"] / sums["pair_n"]) == pytest.approx(ppl_loss, rel=1e-5)
    lo, hi = loss_interval("perplexity", sums)
    assert lo <= ppl_loss <= hi
