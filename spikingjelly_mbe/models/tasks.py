"""Evaluation tasks: a pretrained model, its held-out data cut into batches, calibration batches and
the per-batch tallies its metric is made of.

A task is the composition of a model (:func:`load_source`: a shipped offline model or the user's own
checkpoint) and a data set (:func:`load_data`), made by :func:`make_task`. Every metric is a
function of sums over batches (:func:`tally`), so a held-out set can be evaluated in shards and the
shards' tallies added up (``experiments.evaluation``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import LabeledSplit, TextSplit, load_lee_text, load_mnist, load_reviews
from ..data.local import load_image_folder, load_text_file
from . import heads, local
from .dinov2 import load_dinov2
from .evaluate import lm_windows, next_token_nll, output_tensor, row_nll, token_stream
from .gpt2_small import load_gpt2_small
from .minilm import MAX_LENGTH, load_minilm, mean_pool
from .paired import unit_sums
from .smollm2 import load_smollm2

Batch = Union[torch.Tensor, Dict[str, torch.Tensor]]
Sums = Dict[str, float]

# model kinds: what the model takes and what is read from it
TEXT, IMAGE, CAUSAL_LM = "text", "image", "causal_lm"
PRETRAINED: Dict[str, tuple[Callable[[], tuple[nn.Module, Any]], str]] = {
    "minilm": (load_minilm, TEXT), "dinov2": (load_dinov2, IMAGE), "gpt2-small": (load_gpt2_small, CAUSAL_LM),
    "smollm2": (load_smollm2, CAUSAL_LM)}
HF_KINDS = {"causal_lm": CAUSAL_LM, "encoder": TEXT, "image": IMAGE}
DATA: Dict[str, Callable[..., Union[LabeledSplit, TextSplit]]] = {
    "reviews": lambda path, seed, image_size: load_reviews(seed=seed),
    "mnist": lambda path, seed, image_size: load_mnist(seed=seed),
    "lee": lambda path, seed, image_size: load_lee_text(seed=seed),
    "text_file": lambda path, seed, image_size: load_text_file(path, seed=seed),
    "image_folder": lambda path, seed, image_size: load_image_folder(path, image_size, seed=seed)}
# (model, data) pairs with a cached linear probe: the task is the probe's held-out accuracy
PROBE_HEADS: Dict[tuple[str, str], Callable[[], heads.ProbeTask]] = {
    ("minilm", "reviews"): heads.review_probe, ("dinov2", "mnist"): heads.mnist_probe}
METRICS = ("accuracy", "perplexity", "agreement", "cosine")


@dataclass
class Source:
    """A loaded model (float32, eval), what it takes (``kind``) and its tokenizer or image processor."""

    name: str
    model: nn.Module
    kind: str
    processor: Any


@dataclass
class EvalBatch:
    """Model inputs (a tensor or forward keyword arguments) and the class labels, when scored by them."""

    inputs: Batch
    labels: Optional[torch.Tensor] = None


@dataclass
class EvalTask:
    """What a conversion is evaluated on: ``metric`` over ``batches`` of held-out data.

    ``readout`` turns a model's output into per-sample values (pooled features, CLS token, logits);
    ``head`` maps features to class logits (probe tasks). ``accuracy`` is in percent over labels,
    ``perplexity`` of the next token, ``agreement`` the fraction of samples whose SNN top-1 equals
    the ANN's and ``cosine`` the worst per-sample cosine of SNN and ANN readouts (both 1 for the ANN).
    """

    name: str
    model: nn.Module
    metric: str
    calib: List[Batch]
    batches: List[EvalBatch]
    readout: Callable[[Any, Batch], torch.Tensor]
    head: Optional[nn.Module] = None
    samples: int = 0
    info: Dict[str, Any] = field(default_factory=dict)

    def features(self, model: nn.Module, batch: EvalBatch) -> torch.Tensor:
        """``readout`` of ``model`` on one batch (no grad)."""
        with torch.no_grad():
            inputs = batch.inputs
            output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
            return self.readout(output, inputs).float()

    def logits(self, features: torch.Tensor) -> Optional[torch.Tensor]:
        """Class or next-token logits behind ``features`` (``None`` for plain encoders: no top-1)."""
        if self.head is not None:
            with torch.no_grad():
                return self.head(features)
        return features if self.metric in ("perplexity", "agreement") else None


def load_source(name: str, path: Optional[str] = None, task: Optional[str] = None, arch: Optional[str] = None,
                timm_kwargs: Optional[Dict[str, Any]] = None) -> Source:
    """A shipped offline model (:data:`PRETRAINED`), or ``hf`` (a ``save_pretrained`` folder,
    ``task`` in ``causal_lm|encoder|image``) or ``timm`` (``arch`` + state-dict file) from ``path``."""
    if name == "hf":
        model, processor = local.load_hf(path, task)
        return Source(name, model, HF_KINDS[task], processor)
    if name == "timm":
        model, processor = local.load_timm(path, arch, timm_kwargs)
        return Source(name, model, IMAGE, processor)
    if name not in PRETRAINED:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(PRETRAINED)}, or model=hf / model=timm "
                         "with model.path=<local checkpoint>")
    loader, kind = PRETRAINED[name]
    model, processor = loader()
    return Source(name, model, kind, processor)


def load_data(name: str, path: Optional[str] = None, seed: int = 0,
              image_size: int = 224) -> Union[LabeledSplit, TextSplit]:
    """A data set of :data:`DATA` (``text_file`` and ``image_folder`` read ``path``)."""
    if name not in DATA:
        raise ValueError(f"unknown data {name!r}: choose one of {sorted(DATA)}")
    return DATA[name](path, seed, image_size)


def _texts(data: Union[LabeledSplit, TextSplit], train: bool) -> Sequence[str]:
    if isinstance(data, TextSplit):
        return data.train if train else data.test
    if not isinstance(data.train_x, list):
        raise ValueError("a text model needs text data: data=reviews, data=lee or data=text_file")
    return data.train_x if train else data.test_x


def _chunks(n: int, size: int) -> List[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def make_task(source: Source, data_name: str, data: Union[LabeledSplit, TextSplit], samples: Optional[int],
              batch_size: int, calib_batches: int, calib_size: int, context: int = 128) -> EvalTask:
    """``source`` evaluated on the first ``samples`` held-out items of ``data`` (texts, images or,
    for a causal LM, tokens; ``None``: all), calibrated on ``calib_batches`` x ``calib_size`` training
    items (sequences of ``context`` tokens for a causal LM)."""
    if samples is not None and samples < 1:
        raise ValueError(f"data.samples must be a positive number of held-out items or null (all), got {samples}")
    name = f"{source.name}/{data_name}"
    if source.kind == CAUSAL_LM:
        tokenizer = source.processor
        test = token_stream(tokenizer, _texts(data, False))[:samples]
        train = token_stream(tokenizer, _texts(data, True))
        need = calib_batches * calib_size * context
        if len(train) < need:
            raise ValueError(f"{data_name}: {len(train)} training tokens, calibration needs {need} "
                             "(lower data.calib_batches, data.calib_size or data.context)")
        calib = [train[i * calib_size * context:(i + 1) * calib_size * context].view(calib_size, context)
                 for i in range(calib_batches)]
        batches = [EvalBatch({"input_ids": w}) for w in lm_windows(test, context, batch_size)]
        return EvalTask(name, source.model, "perplexity", [{"input_ids": c} for c in calib], batches,
                        lambda out, inputs: output_tensor(out, "logits"), samples=len(test))
    pair = PROBE_HEADS.get((source.name, data_name))
    head = pair().head if pair is not None else None
    if source.kind == TEXT:
        tokenizer = source.processor
        texts, train = _texts(data, False), _texts(data, True)

        def prepare(items: Sequence[str]) -> Batch:
            return dict(tokenizer(list(items), padding=True, truncation=True, max_length=MAX_LENGTH,
                                  return_tensors="pt"))
        readout = lambda out, inputs: mean_pool(output_tensor(out, "last_hidden_state"), inputs["attention_mask"])  # noqa: E731
    elif isinstance(data, LabeledSplit) and isinstance(data.train_x, np.ndarray):
        texts, train, prepare = data.test_x, data.train_x, source.processor
        readout = cls_readout
    else:
        raise ValueError(f"an image model needs image data: data=mnist or data=image_folder, got data={data_name}")
    n = len(texts) if samples is None else min(samples, len(texts))
    labels = torch.as_tensor(np.asarray(data.test_y[:n])) if head is not None else None
    batches = [EvalBatch(prepare(texts[s]), None if labels is None else labels[s]) for s in _chunks(n, batch_size)]
    calib = [prepare(train[i * calib_size:(i + 1) * calib_size]) for i in range(calib_batches)]
    return EvalTask(name, source.model, "accuracy" if head is not None else "cosine", calib, batches, readout, head,
                    samples=n)


def cls_readout(output: Any, inputs: Batch) -> torch.Tensor:
    """The final CLS token of an HF image encoder, or a timm model's pooled output."""
    hidden = output_tensor(output, "last_hidden_state")
    return hidden[:, 0] if hidden.dim() == 3 else hidden


def tally(task: EvalTask, batch: EvalBatch, features: torch.Tensor) -> Sums:
    """The sums ``task.metric`` is made of, for one model's ``features`` on one batch: correct and
    count (accuracy), summed next-token NLL and tokens (perplexity); nothing for the ANN-relative metrics."""
    if task.metric == "accuracy":
        predicted = task.logits(features).argmax(-1)
        return {"correct": float((predicted == batch.labels).sum()), "count": float(len(batch.labels))}
    if task.metric == "perplexity":
        nll, count = next_token_nll(features, batch.inputs["input_ids"])
        return {"nll": nll, "tokens": float(count)}
    return {}


def agreement(task: EvalTask, ann: torch.Tensor, snn: torch.Tensor) -> Sums:
    """Per batch: samples (tokens for LMs) whose SNN top-1 equals the ANN's, their count, and the sum
    and minimum of the per-sample cosine of the readouts."""
    cosine = F.cosine_similarity(ann.flatten(1).double(), snn.flatten(1).double(), dim=1)
    sums = {"cosine_sum": float(cosine.sum()), "cosine_min": float(cosine.min()), "samples": float(len(cosine))}
    ann_logits, snn_logits = task.logits(ann), task.logits(snn)
    if ann_logits is not None:
        same = ann_logits.argmax(-1) == snn_logits.argmax(-1)
        sums.update(same=float(same.sum()), top1=float(same.numel()))
    return sums


def paired(task: EvalTask, batch: EvalBatch, ann: torch.Tensor, snn: torch.Tensor) -> Sums:
    """Per batch: the :func:`.paired.unit_sums` of what the SNN lost against the ANN on each unit
    (an item's correctness for accuracy, a window's next-token NLL for perplexity); nothing for the
    ANN-relative metrics."""
    if task.metric == "accuracy":
        right = [(task.logits(f).argmax(-1) == batch.labels).double() for f in (ann, snn)]
        return unit_sums(right[0] - right[1], torch.ones_like(right[0]))
    if task.metric == "perplexity":
        ids = batch.inputs["input_ids"]
        lost = row_nll(snn, ids) - row_nll(ann, ids)
        return unit_sums(lost, torch.full_like(lost, ids.shape[1] - 1))
    return {}


def metric_value(metric: str, sums: Sums, comparison: Sums) -> float:
    """The metric from summed tallies (``comparison``: summed :func:`agreement` of SNN vs ANN; ``None``
    for the ANN side of the ANN-relative metrics gives their reference value 1)."""
    if metric == "accuracy":
        return 100.0 * sums["correct"] / sums["count"]
    if metric == "perplexity":
        return math.exp(sums["nll"] / sums["tokens"])
    if metric == "agreement":
        return comparison["same"] / comparison["top1"] if comparison else 1.0
    if metric == "cosine":
        return comparison["cosine_min"] if comparison else 1.0
    raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")


def metric_loss(metric: str, ann: float, snn: float) -> float:
    """What the conversion lost: accuracy points, perplexity increase in percent, or ``ann - snn``
    for the ANN-relative metrics (agreement, cosine)."""
    return 100.0 * (snn / ann - 1.0) if metric == "perplexity" else ann - snn


__all__ = ["DATA", "EvalBatch", "EvalTask", "PRETRAINED", "PROBE_HEADS", "Source", "agreement", "cls_readout",
           "load_data", "load_source", "make_task", "metric_loss", "metric_value", "paired", "tally"]
