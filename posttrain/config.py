"""One typed configuration system for every stage.

A stage config is a dataclass whose fields are documented with `opt(...)`.
It loads from YAML, takes `--set key=value` overrides, validates types and
choices with errors that name the key, and renders its own reference page
(docs/options.md is generated from these classes, so docs cannot drift).

Override keys may be full paths (`train.lr`), prefixed by the stage name
(`sft.train.lr`, `sft.lr`), or a bare field name when it is unique (`lr`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import ConfigError


def opt(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, factory=None):
    """A documented config field. `choices` restricts the allowed values."""
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- conversion


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        last = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: cannot use {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else str
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):  # float(True) would silently be 1.0
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None or isinstance(value, (dict, list)):  # str(None) would silently be 'None'
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_choices(f: dataclasses.Field, value: Any, key: str) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}.")


def from_dict(cls, data: dict | None, prefix: str = "", base=None):
    """Build config `cls` from a nested dict, validating every key and value.

    Keys not given keep the defaults of `base` (default: `cls()`), so a section whose
    default comes from a factory (pretrain's `train`) keeps it when one key is set.
    """
    data = dict(data or {})
    base = cls() if base is None else base
    hints = _hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in by_name]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(by_name), n=1)
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(f"unknown key '{prefix}{k}'.{hint} Allowed here: {', '.join(by_name)}.")
    kwargs = {}
    for name, value in data.items():
        f, tp, key = by_name[name], hints[name], f"{prefix}{name}"
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {tp.__name__} options, got {value!r}")
            kwargs[name] = from_dict(tp, value, prefix=f"{key}.", base=getattr(base, name))
        else:
            v = _coerce(value, tp, key)
            _check_choices(f, v, key)
            kwargs[name] = v
    obj = dataclasses.replace(base, **kwargs)
    for f in fields(cls):  # defaults must satisfy choices too
        if f.name not in kwargs and not is_dataclass(hints[f.name]):
            _check_choices(f, getattr(obj, f.name), f"{prefix}{f.name}")
    return obj


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- overrides


def _leaf_paths(cls, prefix: tuple = ()) -> list[tuple[str, ...]]:
    out = []
    hints = _hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out += _leaf_paths(hints[f.name], prefix + (f.name,))
        else:
            out.append(prefix + (f.name,))
    return out


def resolve_key(cls, key: str, stage: str | None = None) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    if stage and parts[0] == stage and len(parts) > 1:
        parts = parts[1:]
    leaves = _leaf_paths(cls)
    if parts in leaves:
        return parts
    matches = [p for p in leaves if p[-len(parts):] == parts]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"key '{key}' is ambiguous; write one of: {', '.join('.'.join(m) for m in matches)}.")
    names = [".".join(p) for p in leaves]
    close = difflib.get_close_matches(".".join(parts), names, n=1) or difflib.get_close_matches(parts[-1], [p[-1] for p in leaves], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown key '{key}'.{hint} See `posttrain config show` or docs/options.md for all keys.")


def _set_path(d: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{p}' is not a section")
    d[path[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'.")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def read_yaml_mapping(path: Path, what: str, holds: str = "a mapping") -> dict:
    """A YAML file that must hold a mapping; errors name the file and say what is wrong."""
    if not path.exists():
        raise ConfigError(f"{what} '{path}' does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} '{path}' must hold {holds}.")
    return loaded


def load_config(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None, stage: str | None = None):
    """YAML file (optionally nested under the stage name) + overrides -> validated config."""
    data: dict = {}
    if path:
        p = Path(path)
        loaded = read_yaml_mapping(p, "config file", "a mapping of options")
        if stage and set(loaded) == {stage} and isinstance(loaded[stage], dict):
            loaded = loaded[stage]
        data = loaded
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set_path(data, resolve_key(cls, key, stage), value)
    return from_dict(cls, data)


# ---------------------------------------------------------------- docs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def options_table(cls, prefix: str = "", inst=None) -> list[str]:
    rows = []
    hints = _hints(cls)
    inst = cls() if inst is None else inst
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            rows += options_table(tp, prefix=f"{prefix}{f.name}.", inst=getattr(inst, f.name))
            continue
        default = getattr(inst, f.name)
        choices = f.metadata.get("choices")
        help_ = f.metadata.get("help", "")
        if choices:
            help_ += f" Choices: {', '.join(f'`{c}`' for c in choices)}."
        rows.append(f"| `{prefix}{f.name}` | {_type_name(tp)} | `{default!r}` | {help_} |")
    return rows


def options_markdown(configs: dict[str, type]) -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config classes by `posttrain config docs`; do not edit by hand.",
        "Set any option in a YAML file (`--config FILE.yaml`) or on the command line",
        "(`--set train.lr=1e-5`; a unique bare name such as `--set lr=1e-5` works too).",
        "",
    ]
    for stage, cls in configs.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines += [f"## `{stage}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += options_table(cls)
        lines.append("")
    return "\n".join(lines)
