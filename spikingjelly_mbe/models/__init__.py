"""Offline pretrained models (installed from package registries, cached as float32), task heads and
task metrics. ``load_model(name)`` returns ``(model, tokenizer_or_processor)``."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .dinov2 import cls_encoder, load_dinov2, load_dinov2_timm
from .evaluate import batched_features, evaluate_classifier, perplexity, token_stream
from .gpt2_small import load_gpt2_small
from .heads import PROBES, ProbeTask, mnist_probe, review_probe
from .minilm import load_minilm, sentence_encoder
from .probe import fit_linear_probe
from .smollm2 import load_smollm2

LOADERS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "minilm": load_minilm, "dinov2": load_dinov2, "dinov2-timm": load_dinov2_timm, "gpt2-small": load_gpt2_small,
    "smollm2": load_smollm2}


def load_model(name: str) -> tuple[nn.Module, Any]:
    """``(model, tokenizer_or_processor)`` for one of :data:`LOADERS` (eval mode, float32)."""
    if name not in LOADERS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[name]()


__all__ = ["LOADERS", "PROBES", "ProbeTask", "batched_features", "cls_encoder", "evaluate_classifier",
           "fit_linear_probe", "load_dinov2", "load_dinov2_timm", "load_gpt2_small", "load_minilm", "load_model", "load_smollm2",
           "mnist_probe", "perplexity", "review_probe", "sentence_encoder", "token_stream"]
