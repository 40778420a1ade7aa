"""Function-preserving rotations of a pre-norm Transformer (QuaRot, SpinQuant without its learned
part), applied to the conversion's deep copy before calibration so that the T-digit spike codes of
the residual stream no longer spend their digits on a few outlier channels.

With the stream ``h`` (a row vector of width ``d``), an orthogonal ``Q`` and a weight layer written
``y = x W + b``, ``W`` of shape (in, out) (an ``nn.Linear``'s ``weight`` transposed):

1. layer scales (DINOv2's ``lambda``) fold into the weight layer before them;
2. LayerNorm models: every weight that writes into the stream (embeddings, position embeddings,
   attention output and MLP down projections, their biases) is multiplied by the centring
   projection ``M = I - 11^T/d``, so the stream has zero mean and each LayerNorm equals a
   weightless RMSNorm with the same eps (``mean(h) = 0`` makes its variance ``mean(h^2)``);
3. each norm's scale ``gamma`` and shift ``beta`` fold into the weight layers reading its output
   (``W -> diag(gamma) W``, ``b -> b + beta W``); the norm becomes a weightless ``nn.RMSNorm``;
4. the stream is rotated, ``h -> h Q``: writers ``W -> W Q`` along their output channels, readers
   ``W -> Q^T W`` along their input channels, embedding tables ``E -> E Q``. A weightless RMSNorm
   commutes with ``Q`` (``||h Q|| = ||h||``), so every reader sees what it saw before;
5. per attention head, the values are rotated by an orthogonal ``H`` (the value layer's output
   channels of the head) and the output projection's matching inputs by ``H^T``: attention weights mix
   tokens, not channels, so ``softmax(.) V H H^T = softmax(.) V``; where no rotary embedding sits
   between the projections and the product, the queries and keys by one more orthogonal ``G``
   (``q G (k G)^T = q k^T``).

The final norm folds into an LM or classification head inside the model. When the model's output is
the final norm's hidden state (an encoder read outside, ``last_hidden_state``), the final norm
becomes a weightless RMSNorm followed by one added ``nn.Linear(d, d)`` computing
``x Q^T diag(gamma) + beta``, which undoes the rotation exactly. A tied LM head is untied first.

Supported models are listed in one table, :data:`LAYOUTS` (and :data:`HEADED` for a base model
inside a head). Post-norm models (BERT, MiniLM) normalise the stream itself, which no rotation of the
stream commutes with: ``rotate='auto'`` leaves them, and any model without a layout, as they are.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from ..ops.norm import norm_module_parts
from .orthogonal import KINDS, rotation

log = logging.getLogger("spikingjelly_mbe.conversion")
MODES = ("off", "auto", *KINDS)  # 'auto': the default kind where the model has a layout, else nothing
AUTO_KIND = "hadamard"
SEED = 0

# (parameter, axis of its output channels) of a weight layer writing into a stream
OUTPUT_AXES: Dict[type, Tuple[Tuple[str, int], ...]] = {
    nn.Linear: (("weight", 0), ("bias", 0)), Conv1D: (("weight", 1), ("bias", 0)),
    nn.Embedding: (("weight", 1),), nn.Conv2d: (("weight", 0), ("bias", 0))}
INPUT_AXIS: Dict[type, int] = {nn.Linear: 1, Conv1D: 0}  # the axis of a weight layer's input channels

Site = Tuple[torch.Tensor, int]  # a tensor and the axis along which it meets the stream


@dataclass(frozen=True)
class Branch:
    """One pre-norm residual branch of a block: ``norm`` reads the stream, ``readers`` read the
    norm's output, ``writer`` (times the layer scale ``scale``, if any) is added to the stream."""

    norm: str
    readers: Tuple[str, ...]
    writer: str
    scale: Optional[str] = None


@dataclass(frozen=True)
class Heads:
    """Where each attention head's values are made (``value``) and read back (``output``), and, in a
    model whose positions are added to the stream (no rotary embedding between the projections and
    the product), its queries and keys (``query``, ``key``); ``fused``: queries, keys and values are
    the thirds of one layer's outputs."""

    value: str
    output: str
    query: Optional[str] = None
    key: Optional[str] = None
    fused: bool = False


@dataclass(frozen=True)
class Layout:
    """A pre-norm Transformer's residual stream, paths relative to its base model: what writes
    into it before the blocks (``embeddings``: modules or parameters; absent ones are skipped), the
    blocks, their branches, the final norm, the heads' values, and whether the norms are LayerNorm;
    ``head``: a weight layer of the base itself reading the final norm (timm's classifier);
    ``identities`` (of the base) and ``block_identities`` (of each block): modules that must be
    ``nn.Identity`` (or absent) for the layout to hold."""

    embeddings: Tuple[str, ...]
    blocks: str
    branches: Tuple[Branch, ...]
    final_norm: str
    heads: Heads
    centered: bool
    head: Optional[str] = None
    identities: Tuple[str, ...] = ()
    block_identities: Tuple[str, ...] = ()


LLAMA = Layout(("embed_tokens",), "layers", (
    Branch("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj"),
    Branch("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")),
    "norm", Heads("self_attn.v_proj", "self_attn.o_proj"), centered=False)
GPT2 = Layout(("wte", "wpe"), "h", (Branch("ln_1", ("attn.c_attn",), "attn.c_proj"),
                                    Branch("ln_2", ("mlp.c_fc",), "mlp.c_proj")),
              "ln_f", Heads("attn.c_attn", "attn.c_proj", "attn.c_attn", "attn.c_attn", fused=True), centered=True)
VIT_EMBEDDINGS = ("embeddings.cls_token", "embeddings.mask_token", "embeddings.register_tokens",
                  "embeddings.position_embeddings", "embeddings.patch_embeddings.projection")
ATTENTION_READERS = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
VIT_HEADS = Heads("attention.v_proj", "attention.o_proj", "attention.q_proj", "attention.k_proj")
DINOV2 = Layout(VIT_EMBEDDINGS, "encoder.layer", (
    Branch("norm1", ATTENTION_READERS, "attention.o_proj", "layer_scale1"),
    Branch("norm2", ("mlp.fc1",), "mlp.fc2", "layer_scale2")),
    "layernorm", VIT_HEADS, centered=True)
VIT = Layout(VIT_EMBEDDINGS, "layers", (Branch("layernorm_before", ATTENTION_READERS, "attention.o_proj"),
                                        Branch("layernorm_after", ("mlp.fc1",), "mlp.fc2")),
             "layernorm", VIT_HEADS, centered=True)
TIMM_VIT = Layout(("cls_token", "reg_token", "pos_embed", "patch_embed.proj"), "blocks", (
    Branch("norm1", ("attn.qkv",), "attn.proj", "ls1"), Branch("norm2", ("mlp.fc1",), "mlp.fc2", "ls2")),
    "norm", Heads("attn.qkv", "attn.proj", "attn.qkv", "attn.qkv", fused=True), centered=True, head="head",
    identities=("norm_pre", "fc_norm", "patch_embed.norm"), block_identities=("attn.q_norm", "attn.k_norm", "attn.norm"))

_HF = "transformers.models"
LAYOUTS: Dict[str, Layout] = {
    f"{_HF}.llama.modeling_llama:LlamaModel": LLAMA, f"{_HF}.qwen2.modeling_qwen2:Qwen2Model": LLAMA,
    f"{_HF}.mistral.modeling_mistral:MistralModel": LLAMA, f"{_HF}.gpt2.modeling_gpt2:GPT2Model": GPT2,
    f"{_HF}.dinov2.modeling_dinov2:Dinov2Model": DINOV2, f"{_HF}.vit.modeling_vit:ViTModel": VIT,
    "timm.models.vision_transformer:VisionTransformer": TIMM_VIT}
# a model holding a base model of :data:`LAYOUTS` and a head reading the final norm: (base, head)
HEADED: Dict[str, Tuple[str, str]] = {
    f"{_HF}.llama.modeling_llama:LlamaForCausalLM": ("model", "lm_head"),
    f"{_HF}.qwen2.modeling_qwen2:Qwen2ForCausalLM": ("model", "lm_head"),
    f"{_HF}.mistral.modeling_mistral:MistralForCausalLM": ("model", "lm_head"),
    f"{_HF}.gpt2.modeling_gpt2:GPT2LMHeadModel": ("transformer", "lm_head"),
    f"{_HF}.vit.modeling_vit:ViTForImageClassification": ("vit", "classifier")}


def qualified(module: nn.Module) -> str:
    """``'module.path:Class'`` of ``module``'s exact class."""
    return f"{type(module).__module__}:{type(module).__name__}"


def supported() -> List[str]:
    """The class names :func:`rotate` can rotate."""
    return sorted(name.rpartition(":")[2] for name in (*LAYOUTS, *HEADED))


class Unsupported(ValueError):
    """The model has no rotation layout, or does not match its family's layout."""


@dataclass
class Found:
    """A model's base (with its :class:`Layout`) and the head reading its final norm, if inside."""

    base: nn.Module
    layout: Layout
    head: Optional[nn.Module]


def find(model: nn.Module) -> Found:
    """``model``'s base model, layout and head; :class:`Unsupported` naming why when it has none."""
    key = qualified(model)
    if key in HEADED:
        base_name, head_name = HEADED[key]
        base, head = getattr(model, base_name, None), getattr(model, head_name, None)
        if base is not None and qualified(base) in LAYOUTS and type(head) in INPUT_AXIS:
            return Found(base, LAYOUTS[qualified(base)], head)
    elif key in LAYOUTS:
        head = LAYOUTS[key].head and getattr(model, LAYOUTS[key].head, None)
        return Found(model, LAYOUTS[key], head if type(head) in INPUT_AXIS else None)
    raise Unsupported(f"{type(model).__name__} has no rotation layout: rotating the residual stream needs a "
                      f"pre-norm Transformer whose norms read the stream ({', '.join(supported())}); a post-norm "
                      "model such as BERT/MiniLM normalises the stream itself, which no rotation commutes with")


def check_mode(mode: object) -> None:
    """``mode`` must be one of :data:`MODES`."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"rotate must be one of {MODES}, got {mode!r}")


def rotate(model: nn.Module, mode: str) -> str:
    """Rotate ``model`` in place as ``mode`` says (:data:`MODES`); returns the report's line.

    ``'off'`` does nothing; ``'auto'`` rotates with :data:`AUTO_KIND` where the model has a layout
    and otherwise logs why not; a kind (``'hadamard'``, ``'orthogonal'``) on a model without one
    raises a ValueError naming the argument and the fix."""
    check_mode(mode)
    if mode == "off":
        return "not rotated (rotate='off')"
    kind = AUTO_KIND if mode == "auto" else mode
    try:
        rotator = Rotator(find(model), kind)
    except Unsupported as e:
        if mode != "auto":
            raise ValueError(f"rotate={mode!r}: {e}. Pass rotate='off' (or 'auto', which leaves such models "
                             "unrotated)") from None
        log.info("convert: rotate='auto' leaves the model unrotated: %s", e)
        return f"not rotated (rotate='auto'): {e}"
    with torch.no_grad():
        return rotator.run()


def along(tensor: torch.Tensor, axis: int, matrix: torch.Tensor, start: int = 0) -> None:
    """``tensor``'s slice ``[start, start + len(matrix))`` of ``axis`` becomes ``slice @ matrix``
    along that axis (computed in float64), in place."""
    part = tensor.narrow(axis, start, matrix.shape[0])
    moved = part.movedim(axis, -1).double() @ matrix.to(tensor.device)
    part.copy_(moved.movedim(-1, axis))


def scale(tensor: torch.Tensor, axis: int, vector: torch.Tensor) -> None:
    """``tensor`` times ``vector`` along ``axis``, in place."""
    shape = [1] * tensor.dim()
    shape[axis] = -1
    tensor.mul_(vector.reshape(shape).to(tensor.dtype))


def output_sites(module: nn.Module) -> List[Site]:
    """The tensors by which a module or parameter writes into a stream, each with its channel axis."""
    if isinstance(module, torch.Tensor):
        return [(module, -1)]
    if type(module) not in OUTPUT_AXES:
        raise Unsupported(f"{type(module).__name__} writes into the residual stream; no rule for its weights")
    return [(getattr(module, name), axis) for name, axis in OUTPUT_AXES[type(module)]
            if getattr(module, name, None) is not None]


def input_site(module: nn.Module) -> Site:
    """The weight by which a weight layer reads a norm's output, with its input-channel axis."""
    if type(module) not in INPUT_AXIS:
        raise Unsupported(f"{type(module).__name__} reads a norm's output; no rule for its weights")
    return module.weight, INPUT_AXIS[type(module)]


def bias_of(module: nn.Module) -> torch.Tensor:
    """``module``'s bias, a zero one added when it has none."""
    if module.bias is None:
        out = module.weight.shape[1 if isinstance(module, Conv1D) else 0]
        module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device))
    return module.bias


class Rotator:
    """One rotation of one model (:func:`rotate`): folds, then the stream's ``Q``, then the heads' ``H``."""

    def __init__(self, found: Found, kind: str) -> None:
        self.found, self.layout, self.kind = found, found.layout, kind
        self.base = found.base
        self.generator = torch.Generator().manual_seed(SEED)
        self.blocks = list(self.part(self.base, self.layout.blocks))
        self.writers: List[Site] = [site for path in self.layout.embeddings
                                    if (m := self.part(self.base, path, optional=True)) is not None
                                    for site in output_sites(m)]
        self.writers += [site for block in self.blocks for b in self.layout.branches
                         for site in output_sites(self.part(block, b.writer))]
        self.readers: List[nn.Module] = []
        self.width = int(self.writers[0][0].shape[self.writers[0][1]])
        self.check()

    def check(self) -> None:
        """Everything the rotation touches is what the layout says, before anything changes (so a
        variant the layout does not describe is refused whole, never half rotated)."""
        identities = [(self.base, path) for path in self.layout.identities]
        identities += [(block, path) for block in self.blocks for path in self.layout.block_identities]
        for owner, path in identities:
            if type(self.part(owner, path, optional=True) or nn.Identity()) is not nn.Identity:
                raise Unsupported(f"{type(owner).__name__}.{path} is not an identity, which its family's "
                                  "rotation layout needs")
        norms = [(block, b.norm) for block in self.blocks for b in self.layout.branches]
        for owner, path in [*norms, (self.base, self.layout.final_norm)]:
            norm = self.part(owner, path)
            if isinstance(norm, nn.LayerNorm) != self.layout.centered or not (
                    isinstance(norm, nn.LayerNorm) or type(norm).__name__.endswith("RMSNorm")):
                raise Unsupported(f"{type(norm).__name__} at {path!r} is not the "
                                  f"{'LayerNorm' if self.layout.centered else 'RMSNorm'} its family's layout needs")
        for block in self.blocks:
            for branch in self.layout.branches:
                for path in branch.readers:
                    input_site(self.part(block, path))
                if branch.scale is not None and len(list(self.part(block, branch.scale).parameters())) > 1:
                    raise Unsupported(f"the layer scale {branch.scale!r} has more than one parameter")
            input_site(self.part(block, self.layout.heads.output))

    @staticmethod
    def part(owner: nn.Module, path: str, optional: bool = False) -> Optional[nn.Module]:
        """The submodule or parameter at ``path``; ``None`` when absent and ``optional``."""
        value: object = owner
        for name in path.split("."):
            value = getattr(value, name, None)
            if value is None:
                if optional:
                    return None
                raise Unsupported(f"{type(owner).__name__} has no {path!r}, which its family's rotation layout needs")
        return value

    def run(self) -> str:
        self.untie()
        self.fold_scales()
        if self.layout.centered:
            d = self.width
            centring = torch.eye(d, dtype=torch.float64) - 1.0 / d
            for tensor, axis in self.writers:
                along(tensor, axis, centring)
        norms = self.fold_norms()
        q = rotation(self.width, self.kind, self.generator)
        for tensor, axis in self.writers:
            along(tensor, axis, q)
        for reader in self.readers:
            along(*input_site(reader), q)
        heads = self.rotate_heads()
        end = "into the head" if self.found.head is not None else "with one added weight layer undoing the rotation"
        return (f"rotated ({self.kind}, d={self.width}, seed {SEED}): residual stream of {len(self.blocks)} blocks; "
                f"{norms} norms made weightless RMSNorm{' after mean-centring the stream' if self.layout.centered else ''}"
                f", their scales folded into {len(self.readers)} weight layers, the final norm {end}; "
                f"values and outputs{', queries and keys' if self.layout.heads.query else ''} of {heads} "
                "attention heads")

    def untie(self) -> None:
        """A head sharing its weight with a stream writer (a tied LM head) gets its own copy."""
        head = self.found.head
        if head is not None and any(head.weight is tensor for tensor, _ in self.writers):
            head.weight = nn.Parameter(head.weight.detach().clone())
            config = getattr(self.base, "config", None)
            if config is not None:
                config.tie_word_embeddings = False

    def fold_scales(self) -> None:
        """Layer scales multiply their writer's outputs; they become ``nn.Identity``."""
        for block in self.blocks:
            for branch in self.layout.branches:
                if branch.scale is None:
                    continue
                for vector in self.part(block, branch.scale).parameters():
                    for tensor, axis in output_sites(self.part(block, branch.writer)):
                        scale(tensor, axis, vector.detach())
                block.set_submodule(branch.scale, nn.Identity())

    def fold_norms(self) -> int:
        """Each norm's scale and shift into its readers; the norm a weightless RMSNorm. Returns how many."""
        count = 0
        for block in self.blocks:
            for branch in self.layout.branches:
                readers = [self.part(block, path) for path in branch.readers]
                self.fold_norm(block, branch.norm, readers)
                count += 1
        if self.found.head is not None:
            self.fold_norm(self.base, self.layout.final_norm, [self.found.head])
        else:
            self.undo_at_end()
        return count + 1

    def fold_norm(self, owner: nn.Module, path: str, readers: List[nn.Module]) -> None:
        norm = self.part(owner, path)
        weight, bias, eps = norm_module_parts(norm)
        for reader in readers:
            tensor, axis = input_site(reader)
            if bias is not None:
                bias_of(reader).add_(torch.tensordot(bias.detach().double(), tensor.double(), dims=([0], [axis]))
                                     .to(tensor.dtype))
            if weight is not None:
                scale(tensor, axis, weight.detach())
            self.readers.append(reader)
        owner.set_submodule(path, nn.RMSNorm(self.width, eps=eps, elementwise_affine=False))

    def undo_at_end(self) -> None:
        """The final norm's output leaves the model: a weightless RMSNorm then ``nn.Linear(d, d)``
        computing ``x diag(gamma) + beta``; a reader of the stream, it becomes ``x Q^T diag(gamma) + beta``
        when the stream is rotated."""
        norm = self.part(self.base, self.layout.final_norm)
        weight, bias, eps = norm_module_parts(norm)
        d = self.width
        like = self.writers[0][0]
        undo = nn.Linear(d, d, bias=bias is not None, dtype=like.dtype, device=like.device)
        undo.weight.copy_(torch.diag(weight.detach()) if weight is not None else torch.eye(d))
        if bias is not None:
            undo.bias.copy_(bias.detach())
        self.base.set_submodule(self.layout.final_norm, nn.Sequential(
            nn.RMSNorm(d, eps=eps, elementwise_affine=False), undo))
        self.readers.append(undo)

    def rotate_heads(self) -> int:
        """Each key/value head's values by its own ``H``, the output projection's inputs of every
        query head reading it by ``H^T``; with queries and keys, those of each head by one more
        ``G``. Returns how many query heads."""
        spec = self.layout.heads
        heads, kv, head_dim = self.head_shape()
        group, width = heads // kv, heads * head_dim
        for block in self.blocks:
            turns = [rotation(head_dim, self.kind, self.generator) for _ in range(kv)]
            self.turn_heads(self.part(block, spec.value), turns, 2 * width if spec.fused else 0, head_dim)
            tensor, axis = input_site(self.part(block, spec.output))
            for h in range(heads):
                along(tensor, axis, turns[h // group], h * head_dim)
            if spec.query is not None:
                turns = [rotation(head_dim, self.kind, self.generator) for _ in range(kv)]
                self.turn_heads(self.part(block, spec.key), turns, width if spec.fused else 0, head_dim)
                self.turn_heads(self.part(block, spec.query), [turns[h // group] for h in range(heads)], 0, head_dim)
        return heads * len(self.blocks)

    @staticmethod
    def turn_heads(layer: nn.Module, turns: List[torch.Tensor], start: int, head_dim: int) -> None:
        """The outputs of head ``j`` of ``layer`` (from output ``start`` on) times ``turns[j]``."""
        for tensor, axis in output_sites(layer):
            for j, turn in enumerate(turns):
                along(tensor, axis, turn, start + j * head_dim)

    def head_shape(self) -> Tuple[int, int, int]:
        """``(query heads, key/value heads, head width)`` from a Hugging Face config, else from the
        attention module's ``num_heads`` and ``head_dim`` (timm)."""
        config = getattr(self.base, "config", None)
        if config is not None:
            heads = config.num_attention_heads
            kv = getattr(config, "num_key_value_heads", None) or heads
            return heads, kv, getattr(config, "head_dim", None) or self.width // heads
        attention = self.part(self.blocks[0], self.layout.heads.output.rpartition(".")[0])
        return attention.num_heads, attention.num_heads, attention.head_dim
