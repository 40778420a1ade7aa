"""SpikingJelly 2.0's own Transformer conversion recipes on the same pretrained models, for the
side-by-side table of ``benchmarks/real_models.py``.

Each recipe is first applied to the model exactly as loaded (what a user would try); a failure is
recorded with its error. ``SpikeZIPTFQANNRecipe`` converts only SpikeZIP-TF's quantised modules
(a QANN needs quantisation-aware training), so a "successful" conversion that replaced nothing is
reported as such rather than scored as a float model. For MiniLM the recipes also get SpikingJelly's
documented BERT boundary (the ``FXFriendlyBertEncoder`` of its SST-2 example, fed the embedding
output and the additive mask), evaluated the way that example does: the input at the first of ``T``
steps, zeros after, outputs summed over the steps.
"""
from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.ann2snn import (Converter, ModuleConverter, SpikeZIPTFQANNRecipe,
                                                   STATransformerRecipe, TransformerTDEquivalentRecipe)

from spikingjelly_mbe.conversion.zoo import main_output
from spikingjelly_mbe.models.minilm import MAX_LENGTH, mean_pool

# recipe name -> (usual T from SpikingJelly's examples, factory(T, calibration batches) -> converter, how its
# examples evaluate: "first-step" = multi-step input at step 0 then zeros, "repeat" = the same input for T
# single steps; outputs summed over the steps either way)
RECIPES: Dict[str, tuple] = {
    "TransformerTDEquivalentRecipe": (8, lambda T, calib: Converter(recipe=TransformerTDEquivalentRecipe(time_steps=T)),
                                      "first-step"),
    "STATransformerRecipe": (8, lambda T, calib: Converter(recipe=STATransformerRecipe(
        dataloader=calib, time_steps=T, mode="spiking_encoder")), "first-step"),
    "SpikeZIPTFQANNRecipe": (32, lambda T, calib: ModuleConverter(recipe=SpikeZIPTFQANNRecipe(
        time_steps=T, model_family="roberta")), "repeat"),
}


CONTAINERS = ("Module", "GraphModule")  # what torch.fx turns traced submodules into: not a replacement


@dataclass
class Attempt:
    """One recipe on one model: the converted model (``None`` on failure) and what happened."""

    recipe: str
    T: int
    style: str
    route: str
    converted: Optional[nn.Module]
    status: str
    seconds: float


def short_error(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:160]}"


def replaced_modules(before: nn.Module, after: nn.Module) -> Counter:
    """``{(old class, new class): count}`` over module paths whose class changed in ``after``."""
    old = {path: type(m).__name__ for path, m in before.named_modules()}
    return Counter((old[path], type(m).__name__) for path, m in after.named_modules()
                   if path in old and old[path] != type(m).__name__ and type(m).__name__ not in CONTAINERS)


def attempt(recipe: str, model: nn.Module, calib: Sequence, route: str) -> Attempt:
    """Convert a copy of ``model`` with ``recipe`` at its usual ``T``; errors are caught and recorded."""
    T, factory, style = RECIPES[recipe]
    began = time.perf_counter()
    try:
        converted = factory(T, list(calib)).convert(copy.deepcopy(model)).eval()
    except Exception as error:  # the table reports any recipe failure with its message
        return Attempt(recipe, T, style, route, None, "fails: " + short_error(error), time.perf_counter() - began)
    seconds = time.perf_counter() - began
    replaced = replaced_modules(model, converted)
    if not replaced:
        return Attempt(recipe, T, style, route, None, "replaced no module", seconds)
    summary = ", ".join(f"{n} {old}->{new}" for (old, new), n in replaced.most_common())
    return Attempt(recipe, T, style, route, converted, f"converted ({summary})", seconds)


class StepAccumulator(nn.Module):
    """A SpikingJelly-converted model run the "repeat" way: single-step mode, the same input at each
    of ``T`` steps after a reset, main outputs (hidden states or logits) summed over the steps."""

    def __init__(self, converted: nn.Module, T: int) -> None:
        super().__init__()
        self.converted, self.T = converted, T
        functional.set_step_mode(converted, "s")

    def forward(self, *args, **kwargs) -> torch.Tensor:
        functional.reset_net(self.converted)
        return sum(main_output(self.converted(*args, **kwargs)) for _ in range(self.T))


class Unpadded(nn.Module):
    """SpikingJelly's FX-friendly BERT encoder with the additive mask fixed to zeros (unpadded
    single sequences), so the model takes one tensor as the STA recipe's calibration expects."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mask", torch.zeros(1, 1, 1, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.encoder(embeddings, self.mask)


def bert_boundary(model: nn.Module) -> nn.Module:
    """SpikingJelly's ``FXFriendlyBertEncoder`` (its BERT SST-2 example) around ``model.encoder``."""
    from spikingjelly.activation_based.ann2snn.examples.bert_sst2_transformer_td_equivalent import \
        FXFriendlyBertEncoder
    return Unpadded(FXFriendlyBertEncoder(model.encoder, model.config)).eval()


def first_step_runner(converted: nn.Module, T: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Multi-step mode: ``x`` at the first of ``T`` steps and zeros after, outputs summed over steps."""
    functional.set_step_mode(converted, "m")

    def run(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(converted)
        steps = torch.zeros(T, *x.shape, dtype=x.dtype)
        steps[0] = x
        return converted(steps).sum(0)
    return run


def boundary_sentence_encoder(a: Attempt, model: nn.Module, tokenizer) -> Callable:
    """Texts -> mean-pooled states of a SpikingJelly-converted BERT boundary, each text alone (no
    padding), run over ``a.T`` steps the way the recipe's examples do."""
    run = first_step_runner(a.converted, a.T) if a.style == "first-step" else StepAccumulator(a.converted, a.T)

    def encode(texts: Sequence[str]) -> torch.Tensor:
        pooled = []
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            embeddings = model.embeddings(input_ids=ids["input_ids"], token_type_ids=ids.get("token_type_ids"))
            pooled.append(mean_pool(run(embeddings), ids["attention_mask"]))
        return torch.cat(pooled)
    return encode


def boundary_calibration(model: nn.Module, tokenizer, texts: Sequence[str]) -> List[tuple]:
    """``(embeddings, 0)`` pairs, one unpadded text each, for recipes that calibrate on a loader."""
    with torch.no_grad():
        return [(model.embeddings(input_ids=tokenizer(t, truncation=True, max_length=MAX_LENGTH,
                                                      return_tensors="pt")["input_ids"]), 0) for t in texts]
