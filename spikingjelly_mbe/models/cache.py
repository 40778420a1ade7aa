"""Build-once caches of converted pretrained models (float32 Hugging Face folders)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel

from ..data.assets import cache_dir, cache_lock


def load_pretrained_strict(model_cls: type[PreTrainedModel], folder: Path) -> PreTrainedModel:
    """``from_pretrained`` of a local folder in float32 that fails on any missing or unexpected weight."""
    model, info = model_cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                            output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise RuntimeError(f"{model_cls.__name__} weights in {folder} do not match: {problems}")
    return model.eval()


def cached_pretrained(key: str, model_cls: type[PreTrainedModel], build: Callable[[Path], None],
                      tokenizer_cls: Any = None) -> tuple[PreTrainedModel, Any]:
    """Model (eval, float32) and tokenizer (or ``None``) from the cache folder ``key``.

    When the folder is absent, ``build(folder)`` writes it first (a ``save_pretrained`` layout:
    ``config.json``, weights, and tokenizer files when ``tokenizer_cls`` is given).
    """
    folder = cache_dir("models") / key
    with cache_lock(folder):
        if not (folder / "config.json").exists():
            start = time.perf_counter()
            tmp = Path(f"{folder}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            build(tmp)
            tmp.rename(folder)
            print(f"[spikingjelly_mbe] cached {key} in {folder} ({time.perf_counter() - start:.0f} s)")
    model = load_pretrained_strict(model_cls, folder)
    tokenizer = tokenizer_cls.from_pretrained(folder, local_files_only=True) if tokenizer_cls else None
    return model, tokenizer
