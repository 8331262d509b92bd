"""Registry: one name per method, built from a TaskSpec and hyper-parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

from metalab.algorithms.base import MetaAlgorithm
from metalab.data.benchmarks import TaskSpec
from metalab.utils.errors import MetalabError

_REGISTRY: dict[str, type[MetaAlgorithm]] = {}


def register(cls: type[MetaAlgorithm]) -> type[MetaAlgorithm]:
    """Class decorator adding a method under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"algorithm {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names(kind: str | None = None) -> list[str]:
    """Registered names; ``kind``: only ``supervised`` or only ``rl`` methods."""
    return sorted(n for n, cls in _REGISTRY.items() if kind is None or cls.kind == kind)


def get(name: str) -> type[MetaAlgorithm]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MetalabError(f"unknown algorithm {name!r}; choose one of {names()}") from None


def make_config(name: str, **hparams: Any):
    """The method's Config dataclass filled with ``hparams``; unknown fields are an error."""
    config_cls = get(name).Config
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise MetalabError(f"{name} has no hyper-parameter {unknown}; it takes {sorted(fields)}")
    for field in dataclasses.fields(config_cls):
        if field.name in hparams and not _fits(str(field.type), hparams[field.name]):
            raise MetalabError(f"{name}: hyper-parameter {field.name} must be {_WANTED[str(field.type)]}, got "
                               f"{hparams[field.name]!r}")
    try:
        return config_cls(**hparams)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise MetalabError(f"bad hyper-parameter for {name}: {exc}; given {hparams}") from None


_WANTED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _fits(annotation: str, value: Any) -> bool:
    """Whether ``value`` has the simple type ``annotation`` names (other annotations: not checked here)."""
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    return True


def build(name: str, spec: TaskSpec, **hparams: Any) -> MetaAlgorithm:
    """Instantiate the registered method ``name`` for tasks described by ``spec``."""
    return get(name)(spec, make_config(name, **hparams))
