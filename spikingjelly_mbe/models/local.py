"""A user's own pretrained model from a local checkpoint: a Hugging Face ``save_pretrained`` folder
or a timm state-dict file. Local files only: nothing is ever downloaded, and a missing path fails
with the argument to pass."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from .cache import load_pretrained_strict
from .dinov2 import DigitImageProcessor

HF_TASKS = ("causal_lm", "encoder", "image")


def _local(path: Optional[str], what: str, example: str) -> Path:
    if not path:
        raise ValueError(f"model.path is required for {what}: pass model.path={example} (local files only; "
                         "nothing is downloaded)")
    found = Path(path).expanduser()
    if not found.exists():
        raise FileNotFoundError(f"model.path={path}: no such file or folder (pass a local {what} checkpoint)")
    return found


def image_size_of(config: Any, default: int = 224) -> int:
    """Input size declared by an HF config (``image_size``), else ``default``."""
    size = getattr(config, "image_size", default)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_hf(path: Optional[str], task: Optional[str]) -> tuple[nn.Module, Any]:
    """``(model, tokenizer_or_image_processor)`` from a ``save_pretrained`` folder, float32, eval.

    ``task``: ``causal_lm`` (``AutoModelForCausalLM`` + tokenizer), ``encoder`` (``AutoModel`` +
    tokenizer) or ``image`` (``AutoModel``; images resized to the config's ``image_size`` and
    ImageNet-normalised)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if task not in HF_TASKS:
        raise ValueError(f"model.task must be one of {HF_TASKS} for model=hf, got {task!r}: pass e.g. model.task=causal_lm")
    folder = _local(path, "model=hf", "/path/to/save_pretrained_folder")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"model.path={path}: no config.json; pass a folder written by save_pretrained")
    model = load_pretrained_strict(AutoModelForCausalLM if task == "causal_lm" else AutoModel, folder)
    if task == "image":
        return model, DigitImageProcessor(image_size_of(model.config))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"model.path={path}: no tokenizer files ({error}); save one there with "
                                "tokenizer.save_pretrained(folder)") from error
    return model, tokenizer


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.save`` file (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_timm(path: Optional[str], arch: Optional[str],
              kwargs: Optional[Mapping[str, Any]] = None) -> tuple[nn.Module, DigitImageProcessor]:
    """A timm ``arch`` with the weights of the state-dict file ``path`` (strict), float32, eval, and
    a processor resizing to its input size. ``kwargs`` go to ``timm.create_model`` (e.g. ``img_size``);
    the classifier width follows the checkpoint's ``head.weight`` (none: ``num_classes=0``)."""
    import timm

    if not arch:
        raise ValueError("model.arch is required for model=timm: pass the architecture the checkpoint was saved "
                         "from, e.g. model.arch=vit_small_patch14_dinov2")
    state = read_state_dict(_local(path, "model=timm", "/path/to/weights.safetensors"))
    head = state.get("head.weight")
    model = timm.create_model(arch, pretrained=False, num_classes=0 if head is None else head.shape[0],
                              **dict(kwargs or {}))
    model.load_state_dict(state, strict=True)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1] if not kwargs or "img_size" not in kwargs \
        else int(kwargs["img_size"])
    return model.float().eval(), DigitImageProcessor(size)
