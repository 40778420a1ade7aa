"""Task metrics that only read model outputs: classifier accuracy and language-model perplexity."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

EncoderFn = Callable[[Sequence | np.ndarray], torch.Tensor]


def output_tensor(output: object, field: str) -> torch.Tensor:
    """``output.<field>`` of a transformers output, else its first element, else the tensor itself."""
    if hasattr(output, field):
        return getattr(output, field)
    return output[0] if isinstance(output, (tuple, list)) else output


def batched_features(encoder_fn: EncoderFn, inputs: Sequence | np.ndarray, batch_size: int = 64,
                     desc: str = "features") -> torch.Tensor:
    """``encoder_fn`` applied batch by batch (no grad, progress bar), concatenated as float32."""
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False):
            chunks.append(encoder_fn(inputs[start:start + batch_size]).float())
    return torch.cat(chunks)


def evaluate_classifier(encoder_fn: EncoderFn, head: nn.Module, inputs: Sequence | np.ndarray,
                        labels: np.ndarray, batch_size: int = 64) -> float:
    """Accuracy of ``head(encoder_fn(x))`` against ``labels``."""
    features = batched_features(encoder_fn, inputs, batch_size, desc="evaluating")
    with torch.no_grad():
        predictions = head(features).argmax(-1).numpy()
    return float((predictions == np.asarray(labels)).mean())


def token_stream(tokenizer: PreTrainedTokenizerBase, docs: Sequence[str]) -> torch.Tensor:
    """All documents as one id stream, each followed by the tokenizer's end-of-sequence token."""
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def lm_windows(token_ids: torch.Tensor, ctx: int, batch_size: int = 8) -> list[torch.Tensor]:
    """``token_ids`` cut into consecutive, non-overlapping windows of ``ctx`` tokens (the last,
    shorter one kept when it has at least 2 tokens), stacked ``batch_size`` at a time; windows of
    one length per batch, so the last chunk may give two batches."""
    ids = token_ids.reshape(-1)
    windows = [ids[i:i + ctx] for i in range(0, len(ids), ctx) if len(ids[i:i + ctx]) > 1]
    batches = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batches += [torch.stack([w for w in chunk if len(w) == length]) for length in sorted({len(w) for w in chunk})]
    return batches


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed cross-entropy of tokens 2..L of each row of ``ids`` given the ones before, and their count."""
    logits, targets = logits[:, :-1].float(), ids[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
    return total, targets.numel()


def row_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each row's summed cross-entropy of its tokens 2..L given the ones before (float64, ``[rows]``)."""
    logits, targets = logits[:, :-1].float(), ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.double().view(targets.shape).sum(1)


def perplexity(model: nn.Module, token_ids: torch.Tensor, ctx: int, batch_size: int = 8) -> float:
    """Perplexity over ``token_ids`` scored in the windows of :func:`lm_windows`: each window predicts
    its tokens 2..ctx from the ones before it inside the window."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in tqdm(lm_windows(token_ids, ctx, batch_size), desc="perplexity", unit="batch", leave=False):
            nll, n = next_token_nll(output_tensor(model(input_ids=batch), "logits"), batch)
            total, count = total + nll, count + n
    return math.exp(total / count)
