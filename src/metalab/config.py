"""Run configurations: typed fields of the config dataclasses, and the named presets shipped with metalab.

A run is plain data: ``{"algorithm", "benchmark": {BenchmarkConfig fields}, "train":
{TrainConfig fields}, "hparams": {the method's Config fields}, "eval_steps",
"test_episodes"}``. A preset is the same as a TOML file in ``metalab/presets/`` (one per
paper setting), with a ``description`` line and the published ``paper`` number (a table
keyed by test-time adaptation steps where it depends on them). Every field is checked against its dataclass:
an unknown name or a value of the wrong type is a :class:`MetalabError` naming the field and
what it takes.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import sys
from importlib import resources
from typing import Any

from metalab.data.benchmarks import BenchmarkConfig
from metalab.engine.trainer import TrainConfig
from metalab.utils.errors import MetalabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = {"benchmark": BenchmarkConfig, "train": TrainConfig}
RUN_KEYS = ("description", "paper", "algorithm", "benchmark", "train", "hparams", "eval_steps", "test_episodes")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: its text}`` from the ``Attributes:`` section of a Google-style docstring."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        match = re.match(r"^\s{8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if match:
            current = [name.strip() for name in match.group(1).split(",")]
            for name in current:
                docs[name] = match.group(2)
        elif current and line.strip() and line.startswith(" " * 12):
            for name in current:
                docs[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" " * 8):
            break
    return docs


def field_type(cls: type, name: str) -> tuple[type, bool]:
    """``(int | float | str | bool, optional)`` of a dataclass field with a simple annotation."""
    annotation = str({f.name: f.type for f in dataclasses.fields(cls)}[name])
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    base = next(p for p in parts if p != "None")
    return {"int": int, "float": float, "str": str, "bool": bool}[base], optional


def coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` checked (and ints widened to floats) for field ``name`` of ``cls``."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if name not in fields:
        raise MetalabError(f"{where}: {cls.__name__} has no field {name!r}; it has {sorted(fields)}")
    kind, optional = field_type(cls, name)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isnan(value):
        return value
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) and kind is not float:
        return value
    wanted = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
    raise MetalabError(f"{where}: {cls.__name__}.{name} must be {wanted}{' or omitted' if optional else ''}, "
                       f"got {value!r}")


def parse_value(text: str) -> Any:
    """A hyper-parameter value from the command line: a Python literal (``0.4``, ``(0.005, 0.1)``,
    ``True``, ``None``, ``'batched'``), ``true``/``false`` in any case, or else the text itself."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string, e.g. inner_optimizer=sgd


def parse_assignments(text: str) -> dict[str, Any]:
    """``"a=1,b=(2, 3),c=sgd"`` -> ``{"a": 1, "b": (2, 3), "c": "sgd"}`` (:func:`parse_value` each);
    commas inside brackets belong to the value."""
    pairs, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            if text[start:i].strip():
                pairs.append(text[start:i])
            start = i + 1
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MetalabError(f"expected KEY=VALUE, got {pair.strip()!r}")
        out[key.strip()] = parse_value(value)
    return out


def check_run(run: dict[str, Any], where: str) -> dict[str, Any]:
    """``run`` with every benchmark/train field checked; unknown top-level keys are an error."""
    unknown = sorted(set(run) - set(RUN_KEYS))
    if unknown:
        raise MetalabError(f"{where}: unknown key(s) {unknown}; a run has {list(RUN_KEYS)}")
    out = dict(run)
    for section, cls in SECTIONS.items():
        values = run.get(section, {})
        if not isinstance(values, dict):
            raise MetalabError(f"{where}: [{section}] must be a table of {cls.__name__} fields")
        out[section] = {k: coerce(cls, k, v, where) for k, v in values.items()}
    if not isinstance(run.get("hparams", {}), dict):
        raise MetalabError(f"{where}: [hparams] must be a table of the method's hyper-parameters")
    return out


def preset_names() -> list[str]:
    """Names of the presets shipped with metalab."""
    folder = resources.files("metalab") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """The run settings of preset ``name`` (checked field by field)."""
    names = preset_names()
    if name not in names:
        raise MetalabError(f"unknown preset {name!r}; `metalab list --presets` shows them: {', '.join(names)}")
    text = (resources.files("metalab") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MetalabError(f"preset {name}: {exc}") from None
    return check_run(data, f"preset {name}")
