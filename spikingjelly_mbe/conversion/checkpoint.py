"""A converted model's settings in its ``state_dict``: a state saved from a conversion with other
settings (``T``, ``code``, ``method``, ...) is refused before anything loads, naming the mismatch."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch.nn as nn

ATTRIBUTE = "mbe_conversion"  # the child module of a converted model that carries its settings
EVALUATION = ("mode",)  # settings an evaluation may switch (set_mode): not part of the state


class ConversionSettings(nn.Module):
    """Holds ``{'method': ..., <setting>: <value>}`` as extra state of the ``state_dict``."""

    def __init__(self, settings: Dict[str, Any]) -> None:
        super().__init__()
        self.settings = dict(settings)

    def get_extra_state(self) -> Dict[str, Any]:
        return dict(self.settings)

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Already compared by :meth:`check` before anything loaded."""

    def check(self, module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        """Load-state pre-hook of the converted model: the saved settings must equal these."""
        saved = state_dict.get(f"{prefix}{ATTRIBUTE}._extra_state")
        if not isinstance(saved, dict):
            return
        differ = [f"{k}={saved.get(k)!r} (this model: {v!r})" for k, v in self.settings.items() if saved.get(k) != v]
        if differ:
            raise ValueError(f"load_state_dict: the state_dict is from a conversion with {', '.join(differ)}; "
                             "convert the model with the same settings to load it")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings.items())


def settings_of(method: str, settings: Any) -> Dict[str, Any]:
    """The method and the fields of its settings dataclass (``OpSettings``, or ECMT's ``ecmt``), less
    :data:`EVALUATION`."""
    fields = dataclasses.asdict(getattr(settings, "ecmt", settings))
    return {"method": method, **{k: v for k, v in fields.items() if k not in EVALUATION}}


def attach_settings(model: nn.Module, method: str, settings: Any) -> None:
    """Give ``model`` its :class:`ConversionSettings` child and the pre-hook that compares them on load."""
    holder = ConversionSettings(settings_of(method, settings))
    model.add_module(ATTRIBUTE, holder)
    model.register_load_state_dict_pre_hook(holder.check)
