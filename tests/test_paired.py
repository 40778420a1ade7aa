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


def test_the_accuracy_interval_is_bonett_and_price_s_from_the_items_only_one_model_gets_right():
    """Sixteen items folded over three batches: the interval is the adjusted Wald interval computed from
    the counts of items the SNN lost (``b``) and won back (``c``), one added to each."""
    rng = np.random.default_rng(0)
    ann = rng.random(16) < 0.9
    snn = np.where(rng.random(16) < 0.8, ann, ~ann)
    d = ann.astype(float) - snn.astype(float)
    parts = [unit_sums(torch.tensor(d[s]), torch.ones(len(d[s]))) for s in (slice(0, 5), slice(5, 11), slice(11, 16))]
    b, c = int((ann & ~snn).sum()), int((~ann & snn).sum())
    p12, p21 = (b + 1) / 18, (c + 1) / 18
    half = 1.959964 * math.sqrt((p12 + p21 - (p12 - p21) ** 2) / 18)
    assert loss_interval("accuracy", fold(parts)) == pytest.approx((100 * (p12 - p21 - half), 100 * (p12 - p21 + half)))
    assert loss_interval("accuracy", unit_sums(torch.zeros(1000), torch.ones(1000)))[1] > 0.2  # nothing changed


def test_the_perplexity_interval_is_the_ratio_estimator_s_through_exp():
    """Three windows losing 1, 3 and 2 nats over 1, 2 and 1 tokens: ``r = 6/4``, residuals
    ``-1/2, 0, 1/2``, ``se = sqrt(1/2 / 6) / (4/3) = sqrt(3)/8``, ``t_2 = 4.3027``; and windows of
    equal length give the t-interval of their mean differences."""
    lo, hi = loss_interval("perplexity", unit_sums(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([1.0, 2.0, 1.0])))
    half = 4.3027 * math.sqrt(3) / 8
    assert (lo, hi) == pytest.approx((100 * math.expm1(1.5 - half), 100 * math.expm1(1.5 + half)), rel=1e-4)
    rng = np.random.default_rng(1)
    per_window = rng.normal(0.05, 0.03, size=8)  # mean NLL lost per token, 8 windows of 127 tokens
    lo, hi = loss_interval("perplexity", unit_sums(torch.tensor(per_window * 127), torch.full((8,), 127.0)))
    half = 2.3646 * per_window.std(ddof=1) / math.sqrt(8)  # t_7's 0.975 quantile, from the table
    mean = per_window.mean()
    assert (lo, hi) == pytest.approx((100 * math.expm1(mean - half), 100 * math.expm1(mean + half)), rel=1e-3)


@pytest.mark.parametrize("case", ["accuracy", "accuracy, few changed", "perplexity"])
def test_the_interval_covers_the_true_loss_in_95_of_every_100_draws(case):
    """Coverage, the interval's definition: 2,000 held-out sets drawn with a known loss (items lost and
    won back with known probabilities, also as rarely as a near-lossless conversion; windows of unequal
    lengths whose tokens lose a known mean NLL), the true loss inside the interval in 93-99 % of them."""
    rng = np.random.default_rng(2)
    inside = 0
    for _ in range(2000):
        if case.startswith("accuracy"):
            n, lose, win = (200, 0.06, 0.03) if case == "accuracy" else (1000, 0.003, 0.001)
            u = rng.random(n)
            d, scored, truth = (u < lose).astype(float) - (u > 1 - win).astype(float), np.ones(n), 100 * (lose - win)
        else:  # windows of 20-128 tokens, each window's tokens shifted by its own mean around 0.04
            scored = rng.integers(20, 129, size=30).astype(float)
            d = np.array([rng.normal(0.04 + s, 0.5, size=int(k)).sum() for s, k in zip(rng.normal(0, 0.02, 30), scored)])
            truth = 100 * math.expm1(0.04)
        lo, hi = loss_interval(case.split(",")[0], unit_sums(torch.tensor(d), torch.tensor(scored)))
        inside += lo <= truth <= hi
    assert 0.93 <= inside / 2000 <= 0.99


def test_no_interval_without_units_or_for_the_ann_relative_metrics_or_from_non_finite_losses():
    assert loss_interval("agreement", unit_sums(torch.ones(5), torch.ones(5))) is None
    assert loss_interval("perplexity", unit_sums(torch.tensor([1.0, math.inf]), torch.ones(2))) is None
    assert loss_interval("perplexity", unit_sums(torch.tensor([1.0, math.nan]), torch.ones(2))) is None
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


def test_a_result_row_carries_the_interval_and_windows_of_two_lengths_count_every_scored_token():
    """``Result.row`` (what ``metrics.json``, the tables and W&B get) carries ``loss_lo``/``loss_hi``; a token
    stream whose last window is shorter (``lm_windows`` puts it in a batch of its own) is paired over
    exactly the tokens ``next_token_nll`` scores."""
    from experiments.evaluation import Result
    from spikingjelly_mbe.models.evaluate import lm_windows
    torch.manual_seed(1)
    lm = EvalTask("lm", torch.nn.Identity(), "perplexity", [], [], lambda o, i: o)
    batches = lm_windows(torch.randint(0, 11, (2 * 16 + 7,)), 16, batch_size=4)
    assert [tuple(b.shape) for b in batches] == [(1, 7), (2, 16)]
    sums, scored, ann_nll, snn_nll = {}, 0, 0.0, 0.0
    for ids in batches:
        ann, snn = torch.randn(*ids.shape, 11), torch.randn(*ids.shape, 11)
        sums = fold([sums, paired(lm, EvalBatch({"input_ids": ids}), ann, snn)])
        (a, count), (s, _) = next_token_nll(ann, ids), next_token_nll(snn, ids)
        scored, ann_nll, snn_nll = scored + count, ann_nll + a, snn_nll + s
    assert (sums["pair_n"], sums["pair_units"]) == (scored, 3)
    row = Result("perplexity", math.exp(ann_nll / scored), math.exp(snn_nll / scored), sums, None, 1.0, 39, 1).row()
    assert (row["loss_lo"], row["loss_hi"]) == loss_interval("perplexity", sums)
    assert row["loss_lo"] < row["loss"] < row["loss_hi"]
