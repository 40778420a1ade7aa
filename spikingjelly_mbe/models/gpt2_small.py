"""A small GPT-2 (``GPT2LMHeadModel``: 4 layers, width 256, 4 heads, context 128) trained by the
project on the Lee news corpus, with a 2,048-token byte-level BPE built from the same training text.

No GPT-2 weights ship in any package, so the first :func:`load_gpt2_small` trains one (a few CPU
minutes, fixed seed, one thread, progress bar) and caches it; later calls load the cache.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ..data.text import load_lee_text
from .cache import cached_pretrained
from .evaluate import perplexity, token_stream

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines the trained checkpoint (part of its cache key)."""

    vocab_size: int = 2048
    layers: int = 4
    width: int = 256
    heads: int = 4
    context: int = 128
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    dropout: float = 0.0
    seed: int = 0
    data_seed: int = 0


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` (deterministic), wrapped as a transformers tokenizer."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=10**6)


def gpt2_small_config(s: TrainSettings, vocab_size: int, eos_id: int) -> GPT2Config:
    """GPT-2 config of the given size (GELU-tanh, pre-LayerNorm, tied embeddings as in GPT-2)."""
    return GPT2Config(vocab_size=vocab_size, n_positions=s.context, n_embd=s.width, n_layer=s.layers,
                      n_head=s.heads, resid_pdrop=s.dropout, embd_pdrop=s.dropout, attn_pdrop=s.dropout,
                      bos_token_id=eos_id, eos_token_id=eos_id)


def train_gpt2_small(s: TrainSettings) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict]:
    """Train on the Lee training documents; returns model (eval), tokenizer and a metrics record."""
    torch.manual_seed(s.seed)
    split = load_lee_text(seed=s.data_seed)
    tokenizer = build_tokenizer(split.train, s.vocab_size)
    train_ids, test_ids = token_stream(tokenizer, split.train), token_stream(tokenizer, split.test)
    model = GPT2LMHeadModel(gpt2_small_config(s, len(tokenizer), tokenizer.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / s.warmup) * 0.5 * (
        1.0 + math.cos(math.pi * min(step, s.steps) / s.steps)))
    generator = torch.Generator().manual_seed(s.seed)
    model.train()
    for _ in (bar := tqdm(range(s.steps), desc="training small GPT-2", unit="step")):
        starts = torch.randint(0, len(train_ids) - s.context, (s.batch_size,), generator=generator)
        batch = torch.stack([train_ids[i:i + s.context] for i in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    metrics = {"train_tokens": len(train_ids), "test_tokens": len(test_ids),
               "test_perplexity": perplexity(model, test_ids, s.context), "settings": asdict(s)}
    return model, tokenizer, metrics


def _build(folder: Path, settings: TrainSettings) -> None:
    model, tokenizer, metrics = train_gpt2_small(settings)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps(metrics, indent=2))


def load_gpt2_small(settings: TrainSettings = TrainSettings()) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """The project's small GPT-2 (eval, float32) and its tokenizer, training it on first use."""
    key = "gpt2-small-lee-" + "-".join(str(v) for v in asdict(settings).values())
    return cached_pretrained(key, GPT2LMHeadModel, lambda folder: _build(folder, settings), PreTrainedTokenizerFast)
