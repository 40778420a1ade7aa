"""Small random-initialised models of every supported family, built locally (tests, benchmarks, demos).

Weights are drawn with fan-in scaling (``N(0, 1/fan_in)``, embeddings ``N(0, 1)``) so activations
are O(1) as in a trained network, rather than the vanishing signals of the 0.02-std default init.
"""
from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
import transformers as hf
from transformers.pytorch_utils import Conv1D

from .calibration import Batch

FAMILIES = ("vit", "bert", "roberta", "gpt2", "llama", "dinov2")
VOCAB, IMAGE, PATCH, LABELS = 96, 32, 8, 10


def _hf_model(family: str, layers: int, hidden: int, heads: int) -> nn.Module:
    common = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                  intermediate_size=4 * hidden)
    if family == "bert":
        return hf.BertForSequenceClassification(hf.BertConfig(vocab_size=VOCAB, num_labels=LABELS, **common))
    if family == "roberta":
        return hf.RobertaForSequenceClassification(hf.RobertaConfig(
            vocab_size=VOCAB, num_labels=LABELS, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common))
    if family == "gpt2":
        return hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=VOCAB, n_layer=layers, n_embd=hidden, n_head=heads,
                                                bos_token_id=0, eos_token_id=0))
    if family == "llama":
        return hf.LlamaModel(hf.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=max(1, heads // 2), **common))
    if family == "dinov2":
        return hf.Dinov2Model(hf.Dinov2Config(image_size=IMAGE, patch_size=PATCH, **common))
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def build(family: str, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0) -> nn.Module:
    """A fresh eval-mode model of ``family`` (each with its own config object)."""
    torch.manual_seed(seed)
    if family == "vit":
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE, patch_size=PATCH,
                                  embed_dim=hidden, depth=layers, num_heads=heads, num_classes=LABELS)
    else:
        model = _hf_model(family, layers, hidden, heads)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, Conv1D, nn.Conv2d)):
                fan_in = m.weight.shape[0] if isinstance(m, Conv1D) else m.weight[0].numel()
                m.weight.normal_(0.0, fan_in ** -0.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 1.0)
    return model.eval()


def make_batch(family: str, size: int, seq_len: int = 16, seed: int = 0) -> Batch:
    """Random token ids (``{'input_ids': ...}``) or images (a tensor for timm, ``pixel_values`` for HF)."""
    g = torch.Generator().manual_seed(seed)
    if family in ("vit", "dinov2"):
        images = torch.randn(size, 3, IMAGE, IMAGE, generator=g)
        return images if family == "vit" else {"pixel_values": images}
    low = 3 if family == "roberta" else 0  # keep RoBERTa's pad/bos/eos ids out of the random tokens
    return {"input_ids": torch.randint(low, VOCAB, (size, seq_len), generator=g)}


def main_output(result: Any) -> torch.Tensor:
    """Logits when the model has a head, else the last hidden state."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    return logits if logits is not None else result.last_hidden_state


def agreement(ann: torch.Tensor, snn: torch.Tensor) -> dict:
    """Worst per-sample cosine similarity and the fraction of positions with the same argmax."""
    cos = torch.nn.functional.cosine_similarity(ann.flatten(1).double(), snn.flatten(1).double(), dim=1)
    same = (ann.argmax(-1) == snn.argmax(-1)).double().mean()
    return {"cosine": cos.min().item(), "argmax": same.item()}
