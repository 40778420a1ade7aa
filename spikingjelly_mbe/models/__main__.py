"""Build every offline model/head cache and print the ANN metrics: ``python -m spikingjelly_mbe.models``."""
from __future__ import annotations

import argparse
import time

import torch

from . import PROBES, load_model, perplexity
from .heads import lee_test_ids

LM_CONTEXT = 128
LANGUAGE_MODELS = ("gpt2-small", "smollm2")


def ann_metric(name: str) -> str:
    """The ANN's held-out metric for ``name`` (building its caches on first use)."""
    if name in PROBES:
        return f"accuracy {PROBES[name]().info['test_accuracy']:.4f}"
    model, tokenizer = load_model(name)
    return f"perplexity {perplexity(model, lee_test_ids(tokenizer), LM_CONTEXT):.2f} (ctx {LM_CONTEXT})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    names = [*PROBES, *LANGUAGE_MODELS]
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {names} (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    unknown = set(args.names) - set(names)
    if unknown:
        parser.error(f"unknown {sorted(unknown)}; choose from {names}")
    torch.set_num_threads(args.threads)
    for name in args.names or names:
        start = time.perf_counter()
        metric = ann_metric(name)
        print(f"{name:11s} {metric}  [{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
