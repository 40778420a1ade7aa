"""A converted model's settings in its ``state_dict``: a state saved from a conversion with other
settings (``T``, ``code``, ``method``, ...) is refused before anything loads, naming the mismatch. A
state saved before a setting existed (:data:`ADDED_SETTINGS`) reads as the value every conversion had then.

The settings are a JSON text held as a ``uint8`` buffer of the model (a tensor like any other entry,
so ``torch.save``, safetensors and ``.to(dtype)``, which leaves integer buffers alone, all carry it)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict

import torch
import torch.nn as nn

BUFFER = "mbe_conversion_settings"
EVALUATION = ("mode",)  # settings an evaluation may switch (set_mode): not part of the state
# settings added after converted states were first saved, each with the value every conversion had before it
# existed: a saved state without one was converted with that value
ADDED_SETTINGS: Dict[str, Any] = {"neuron": "mbe", "bias_correction": False, "digit_budget": None,
                                  "energy_budget": None, "operand_code": None, "centered_codes": False,
                                  "probability_exponents": False, "energy_by": "digits"}


def settings_of(method: str, settings: Any) -> Dict[str, Any]:
    """The method and the fields of its settings dataclass (``OpSettings``, ``ECMTSettings``), less
    :data:`EVALUATION`."""
    fields = dataclasses.asdict(settings)
    return {"method": method, **{k: v for k, v in fields.items() if k not in EVALUATION}}


def encode(settings: Dict[str, Any]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(settings).encode()), dtype=torch.uint8)


def decode(buffer: torch.Tensor) -> Dict[str, Any]:
    return json.loads(bytes(buffer.tolist()).decode())


def attach_settings(model: nn.Module, method: str, settings: Any) -> None:
    """Store ``model``'s conversion settings as a buffer and compare them on every ``load_state_dict``."""
    model.register_buffer(BUFFER, encode(settings_of(method, settings)))
    model.register_load_state_dict_pre_hook(check_settings)


def check_settings(model: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state pre-hook of a converted model: the saved settings (a setting of
    :data:`ADDED_SETTINGS` they lack read as its value then) must equal its own; the state then
    carries the model's own settings buffer."""
    saved = state_dict.get(prefix + BUFFER)
    if not isinstance(saved, torch.Tensor):
        return
    own = decode(getattr(model, BUFFER))
    saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k in own}, **decode(saved)}
    differ = [f"{k}={saved.get(k)!r} (this model: {v!r})" for k, v in own.items() if saved.get(k) != v]
    if differ:
        raise ValueError(f"load_state_dict: the state_dict is from a conversion with {', '.join(differ)}; "
                         "convert the model with the same settings to load it")
    state_dict[prefix + BUFFER] = getattr(model, BUFFER).clone()
