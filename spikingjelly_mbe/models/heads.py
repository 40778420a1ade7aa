"""Task heads fitted once on frozen ANN features and cached: MiniLM -> movie-review polarity,
DINOv2 -> MNIST digit class. The encoders are only read, never modified."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..data import LabeledSplit, cache_dir, load_mnist, load_reviews
from ..data.assets import installed_version
from . import dinov2, minilm
from .evaluate import EncoderFn, batched_features, evaluate_classifier
from .probe import fit_linear_probe


@dataclass(frozen=True)
class ProbeTask:
    """A frozen encoder, its data split and the cached linear head on its features."""

    encoder: EncoderFn
    data: LabeledSplit
    head: nn.Linear
    info: dict

    def evaluate(self, encoder: EncoderFn | None = None) -> float:
        """Test accuracy through ``encoder`` (default: the ANN's) and the fitted head."""
        return evaluate_classifier(encoder or self.encoder, self.head, self.data.test_x, self.data.test_y)


def _cached_probe(key: str, encoder: EncoderFn, data: LabeledSplit, seed: int) -> ProbeTask:
    path = cache_dir("heads") / f"{key}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        head = nn.Linear(*blob["weight"].shape[::-1])
        head.load_state_dict({"weight": blob["weight"], "bias": blob["bias"]})
        return ProbeTask(encoder, data, head.eval(), blob["info"])
    features = batched_features(encoder, data.train_x, desc=f"{key}: train features")
    head, info = fit_linear_probe(features, data.train_y, seed=seed)
    task = ProbeTask(encoder, data, head.eval(), info)
    info["test_accuracy"] = task.evaluate()
    torch.save({"weight": head.weight.detach(), "bias": head.bias.detach(), "info": info}, path)
    return task


def review_probe(seed: int = 0) -> ProbeTask:
    """MiniLM mean-pooled sentence embeddings -> positive/negative review (logistic regression)."""
    model, tokenizer = minilm.load_minilm()
    key = f"minilm-{installed_version(minilm.REQUIREMENT)}-reviews-seed{seed}"
    return _cached_probe(key, minilm.sentence_encoder(model, tokenizer), load_reviews(seed=seed), seed)


def mnist_probe(seed: int = 0, image_size: int = 56) -> ProbeTask:
    """DINOv2 CLS features of digits resized to ``image_size`` -> digit class (logistic regression)."""
    model, processor = dinov2.load_dinov2(image_size)
    key = f"dinov2-{installed_version(dinov2.REQUIREMENT)}-mnist{image_size}-seed{seed}"
    return _cached_probe(key, dinov2.cls_encoder(model, processor), load_mnist(seed=seed), seed)


PROBES: dict[str, Callable[..., ProbeTask]] = {"minilm": review_probe, "dinov2": mnist_probe}
