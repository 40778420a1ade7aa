"""ECMT's operators wired by hand into MiniLM: mean-pooled embedding cosine against the ANN.

    python benchmarks/ecmt_minilm_check.py --percentile 99 90 --T 8
    python benchmarks/ecmt_minilm_check.py --percentile 90 --n 8 --T 4 8 16 --sentences 48

Every encoder ``nn.Linear`` gets an MT neuron on its input, every LayerNorm and the GELU get
Expectation Compensation, and attention runs through ``AttentionInterface`` with two MT-coded
matrix products and a compensated Softmax; the pooler stays float (mean pooling does not use it).
Thresholds are calibrated on 4 batches of 16 training reviews (run through ``run_steps`` at T=1),
then held-out test reviews are evaluated with ``run_steps`` at each T. This is the check of the
operators before the structural conversion wires them (``convert(..., method="ecmt")``).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from spikingjelly_mbe.data.reviews import load_reviews
from spikingjelly_mbe.models.minilm import load_minilm, mean_pool
from spikingjelly_mbe.ecmt import ECMTSettings, run_steps
from spikingjelly_mbe.ecmt.multi_threshold import THRESHOLDS
from spikingjelly_mbe.ops import collect_stats

NAME = "ecmt_check"


def compensated_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask, scaling: float, dropout: float = 0.0, **_) -> tuple:
    """``softmax(q k^T scaling + mask) v`` from the module's ECMT products and Softmax; ``[B, S, H, hd]``."""
    scores = module.ecmt["scores"](query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:  # boolean, True = attend
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    context = module.ecmt["context"](module.ecmt["softmax"](scores), value)
    return context.transpose(1, 2).contiguous(), None


def boolean_mask(*args, **kwargs):
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})


def wire(model: nn.Module, settings: ECMTSettings) -> nn.Module:
    """A copy of the BERT encoder ``model`` with ECMT's operators in place."""
    snn = copy.deepcopy(model)
    for parent_path, parent in list(snn.named_modules()):
        if parent_path.startswith("pooler"):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, settings.linear_input(child))
            elif isinstance(child, nn.LayerNorm):
                setattr(parent, name, settings.layer_norm(child))
        if hasattr(parent, "intermediate_act_fn"):
            parent.intermediate_act_fn = settings.activation("gelu", None)
        if type(parent).__name__ == "BertSelfAttention":
            parent.ecmt = nn.ModuleDict(dict(scores=settings.matmul(), softmax=settings.softmax(-1),
                                             context=settings.matmul()))
    AttentionInterface.register(NAME, compensated_attention)
    AttentionMaskInterface.register(NAME, boolean_mask)
    snn.set_attn_implementation(NAME)
    return snn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--percentile", type=float, nargs="+", default=[99.0, 90.0])
    parser.add_argument("--n", type=int, default=THRESHOLDS, help="MT thresholds per sign")
    parser.add_argument("--T", type=int, nargs="+", default=[8])
    parser.add_argument("--sentences", type=int, default=48)
    args = parser.parse_args()
    model, tokenizer = load_minilm()
    split = load_reviews()

    def tokens(texts):
        return tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")

    calibration = [tokens(split.train_x[i:i + 16]) for i in range(0, 64, 16)]
    test = tokens(split.test_x[:args.sentences])
    with torch.no_grad():
        reference = mean_pool(model(**test).last_hidden_state, test["attention_mask"])
    print("| percentile | n | T | mean cos | min cos | MT spikes / input | saturated | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    for percentile in args.percentile:
        for T in tqdm(args.T, desc=f"percentile {percentile}", leave=False):
            snn = wire(model, ECMTSettings(T=T, n=args.n, percentile=percentile))
            with torch.no_grad():
                for batch in calibration:
                    run_steps(snn, **batch, T=1)
                for op in snn.modules():
                    if getattr(op, "calibrating", False):
                        op.finish_calibration()
                start = time.perf_counter()
                out = run_steps(snn, **test, T=T)
            seconds = time.perf_counter() - start
            cos = F.cosine_similarity(mean_pool(out.last_hidden_state, test["attention_mask"]), reference, -1)
            stats = sum(collect_stats(snn).values())
            print(f"| {percentile:g} | {args.n} | {T} | {cos.mean():.4f} | {cos.min():.4f} | "
                  f"{stats.spikes / max(stats.neurons, 1):.3f} | {stats.clamped} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
