"""One conversion config object: every option of :func:`~spikingjelly_mbe.convert` and its default, once.

:data:`ConversionConfig`'s fields are the engine's own (``method``, ``allow_float_fallback``, ``rotate``) followed
by the fields of every registered method's settings dataclass (:data:`~.method.METHODS`), with the
defaults those dataclasses declare; options two methods share (``T``, ``mode``) must agree. The
recipes' options, the Hydra schema (``experiments/config.py``) and the result-table columns derive
from these fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .method import METHODS, SpikingMethod

ENGINE_FIELDS: Tuple[Tuple[str, type, Any], ...] = (("method", str, "mbe"), ("allow_float_fallback", bool, False),
                                                    ("rotate", str, "off"))


def method_fields(method: str) -> Tuple[str, ...]:
    """The option names of ``method``'s settings."""
    return tuple(f.name for f in dataclasses.fields(METHODS[method]))


def _fields() -> List[Tuple[str, Any, dataclasses.Field]]:
    found: Dict[str, dataclasses.Field] = {}
    for name, settings in METHODS.items():
        for f in dataclasses.fields(settings):
            if f.name in found and found[f.name].default != f.default:
                raise TypeError(f"methods disagree on the default of {f.name!r}: {found[f.name].default!r} "
                                f"against {name}'s {f.default!r}")
            found.setdefault(f.name, f)
    engine = [(name, kind, dataclasses.field(default=default)) for name, kind, default in ENGINE_FIELDS]
    return engine + [(f.name, f.type, dataclasses.field(default=f.default)) for f in found.values()]


def _with(self: Any, **overrides: Any) -> Any:
    """A copy with ``overrides``; an unknown name raises naming the known ones."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
    if unknown:
        raise TypeError(f"unknown conversion option(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
    return dataclasses.replace(self, **overrides)


def _given(self: Any) -> Tuple[str, ...]:
    """The options set away from their defaults."""
    return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default)


def _settings(self: Any, given: Iterable[str] = ()) -> SpikingMethod:
    """The method's operator factory from this config. ``given`` (with every option away from its
    default) must be options of the method: one it does not use raises, naming it."""
    if self.method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
    own = method_fields(self.method)
    ignored = sorted((set(given) | set(_given(self))) - set(own) - {name for name, _, _ in ENGINE_FIELDS})
    if ignored:
        raise ValueError(f"method={self.method!r} does not use {', '.join(ignored)}: leave "
                         f"{'it' if len(ignored) == 1 else 'them'} out (its options: {', '.join(own)})")
    settings = METHODS[self.method](**{name: getattr(self, name) for name in own})
    settings.validate()
    return settings


def _options(self: Any) -> Dict[str, Any]:
    """``{option: value}`` of the method's own options (what a recipe of that method takes)."""
    return {name: getattr(self, name) for name in method_fields(self.method)}


ConversionConfig = dataclasses.make_dataclass(
    "ConversionConfig", _fields(), frozen=True,
    namespace={"replace": _with, "given": _given, "settings": _settings, "options": _options, "__doc__": (
        "Every option of a conversion: ``method`` (a key of :data:`~.method.METHODS`), "
        "``allow_float_fallback``, ``rotate`` (:mod:`~.rotation`) and the options of each method's settings, with their defaults "
        "(:class:`~spikingjelly_mbe.mbe.OpSettings`, :class:`~spikingjelly_mbe.ecmt.ECMTSettings`). "
        "``config.replace(**overrides)`` copies it; ``config.settings()`` builds the method's "
        "factory, refusing options the method does not use.")})
ConversionConfig.__module__ = __name__
DEFAULTS = ConversionConfig()


def resolve(config: Optional[Any], overrides: Mapping[str, Any], settings: Optional[SpikingMethod] = None) \
        -> Tuple[Any, SpikingMethod]:
    """``config`` (default :data:`DEFAULTS`) with ``overrides``, and the method's factory. ``settings``:
    a method's settings object given whole (``ecmt=ECMTSettings(...)``); an option also given as a
    keyword must agree with it."""
    config = DEFAULTS if config is None else config
    if not isinstance(config, ConversionConfig):
        raise TypeError(f"config must be a ConversionConfig, got {type(config).__name__}")
    config = config.replace(**overrides)
    given = set(overrides)
    if settings is not None:
        method = next(name for name, cls in METHODS.items() if isinstance(settings, cls))
        if "method" in given and config.method != method:
            raise ValueError(f"settings of method {method!r} given with method={config.method!r}")
        for f in dataclasses.fields(settings):
            value = getattr(settings, f.name)
            if f.name in given and getattr(config, f.name) != value:
                raise ValueError(f"{f.name} is given twice and differently: {f.name}={getattr(config, f.name)!r} "
                                 f"and {type(settings).__name__}({f.name}={value!r}); give it once")
        config = config.replace(method=method, **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)})
    return config, config.settings(given)
