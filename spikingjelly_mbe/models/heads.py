"""The tasks of the offline models. Heads fitted once on frozen ANN features and cached: MiniLM ->
movie-review polarity, DINOv2 -> MNIST digit class (the encoders are only read, never modified);
held-out Lee news text for the decoders' perplexity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from ..data import LabeledSplit, cache_dir, load_lee_text, load_mnist, load_reviews
from ..data.assets import cache_lock, installed_version
from . import dinov2, minilm
from .evaluate import EncoderFn, batched_features, evaluate_classifier, token_stream
from .probe import fit_linear_probe


@dataclass(frozen=True)
class ProbeTask:
    """A frozen ANN encoder, its data split and the cached linear head fitted on its features."""

    model: nn.Module
    encoder_for: Callable[[nn.Module], EncoderFn]
    data: LabeledSplit
    head: nn.Linear
    info: dict

    def evaluate(self, model: nn.Module | None = None, limit: int | None = None) -> float:
        """Test accuracy of the head on the features of ``model`` (default: the ANN; a converted copy
        must take the same inputs), over the first ``limit`` test items (all by default)."""
        n = len(self.data.test_y) if limit is None else limit
        return evaluate_classifier(self.encoder_for(model or self.model), self.head, self.data.test_x[:n],
                                   self.data.test_y[:n])


def _cached_probe(key: str, model: nn.Module, encoder_for: Callable[[nn.Module], EncoderFn], data: LabeledSplit,
                  seed: int) -> ProbeTask:
    path = cache_dir("heads") / f"{key}.pt"
    with cache_lock(path):
        if path.exists():
            blob = torch.load(path, weights_only=True)
            head = nn.Linear(*blob["weight"].shape[::-1])
            head.load_state_dict({"weight": blob["weight"], "bias": blob["bias"]})
            return ProbeTask(model, encoder_for, data, head.eval(), blob["info"])
        features = batched_features(encoder_for(model), data.train_x, desc=f"{key}: train features")
        head, info = fit_linear_probe(features, data.train_y, seed=seed)
        task = ProbeTask(model, encoder_for, data, head.eval(), info)
        info["test_accuracy"] = task.evaluate()
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"weight": head.weight.detach(), "bias": head.bias.detach(), "info": info}, tmp)
        tmp.replace(path)
        return task


def review_probe(seed: int = 0) -> ProbeTask:
    """MiniLM mean-pooled sentence embeddings -> positive/negative review (logistic regression)."""
    model, tokenizer = minilm.load_minilm()
    key = f"minilm-{installed_version(minilm.REQUIREMENT)}-reviews-seed{seed}"
    return _cached_probe(key, model, lambda m: minilm.sentence_encoder(m, tokenizer), load_reviews(seed=seed), seed)


def mnist_probe(seed: int = 0, image_size: int = dinov2.IMAGE_SIZE) -> ProbeTask:
    """DINOv2 CLS features of digits resized to ``image_size`` -> digit class (logistic regression).
    The head also serves the timm copy (:func:`~.dinov2.load_dinov2_timm`), whose features are equal."""
    model, processor = dinov2.load_dinov2(image_size)
    key = f"dinov2-{installed_version(dinov2.REQUIREMENT)}-mnist{image_size}-seed{seed}"
    return _cached_probe(key, model, lambda m: dinov2.cls_encoder(m, processor), load_mnist(seed=seed), seed)


PROBES: dict[str, Callable[..., ProbeTask]] = {"minilm": review_probe, "dinov2": mnist_probe}


def lee_test_ids(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> torch.Tensor:
    """The held-out Lee documents as one token stream (the small GPT-2 never trained on them)."""
    return token_stream(tokenizer, load_lee_text(seed=seed).test)
