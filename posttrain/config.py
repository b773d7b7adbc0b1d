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
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import ConfigError
from posttrain.yamlfiles import key_lines, load_strict, read_yaml_mapping


@dataclass(frozen=True)
class Range:
    """The numbers a field allows: bounds (None: unbounded; open or closed) plus listed exceptions such as -1."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()

    def contains(self, v) -> bool:
        if v in self.also:
            return True
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {lo}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {hi}"
        else:
            text = "finite"
        return text + "".join(f" or {_num(a)}" for a in self.also)


def _num(x) -> str:
    return "" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def opt(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, factory=None, *,
        ge=None, gt=None, le=None, lt=None, also: tuple = (), pattern: str | None = None, allowed: str | None = None):
    """A documented config field.

    `choices` restricts the values to a list; `ge`/`gt`/`le`/`lt` declare the range of a number
    (>=, >, <=, <), `also` lists values allowed outside it (e.g. -1 for "derive it"); `pattern` is a
    regular expression a string must match in full, described to the user by `allowed`.
    Floats must always be finite. from_dict checks all of it; docs/options.md shows it.
    """
    rng = None
    if any(b is not None for b in (ge, gt, le, lt)) or also:
        rng = Range(lo=gt if gt is not None else ge, hi=lt if lt is not None else le,
                    lo_open=gt is not None, hi_open=lt is not None, also=tuple(also))
    meta = {"help": help, "choices": choices, "range": rng, "pattern": pattern, "allowed": allowed}
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
        if not math.isfinite(f) or f != int(f):  # int(nan) and int(inf) would raise
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


def _example(f: dataclasses.Field, key: str) -> str:
    return f" (the default is {key}={f.default!r})" if f.default not in (dataclasses.MISSING, None) else ""


def check_value(f: dataclasses.Field, value: Any, key: str) -> None:
    """Choices, declared range, finiteness and pattern of one field's value; ConfigError naming key, value and fix."""
    _check_choices(f, value, key)
    rng = f.metadata.get("range")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, float) and not math.isfinite(value):
        need = f"a finite number {rng}" if rng else "a finite number"
        raise ConfigError(f"{key}: {value} is not allowed; it must be {need}{_example(f, key)}.")
    if rng and number and not rng.contains(value):
        raise ConfigError(f"{key}: {value!r} is out of range; it must be {rng}. Set {key} to a value {rng}"
                          f"{_example(f, key)}.")
    pattern = f.metadata.get("pattern")
    if pattern and isinstance(value, str) and not re.fullmatch(pattern, value):
        raise ConfigError(f"{key}: {value!r} is not allowed; use {f.metadata.get('allowed') or pattern}.")


def allowed_text(f: dataclasses.Field) -> str:
    """What docs/options.md shows a field allows: choices, range or pattern."""
    meta = f.metadata
    if meta.get("choices"):
        return ", ".join(f"`{c}`" for c in meta["choices"])
    if meta.get("range"):
        return str(meta["range"])
    return meta.get("allowed") or ""


def _keyed(e: ConfigError, key: str) -> ConfigError:
    """Remember which option an error is about (load_config names the file line or --set it came from)."""
    if getattr(e, "key", None) is None:
        e.key = key
    return e


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
        close = difflib.get_close_matches(str(k), list(by_name), n=1)
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
        raise _keyed(ConfigError(f"unknown key '{prefix}{k}'.{hint} Allowed here: {', '.join(by_name)}."), f"{prefix}{k}")
    kwargs = {}
    for name, value in data.items():
        f, tp, key = by_name[name], hints[name], f"{prefix}{name}"
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise _keyed(ConfigError(f"{key}: expected a mapping of {tp.__name__} options, got {value!r}"), key)
            kwargs[name] = from_dict(tp, value, prefix=f"{key}.", base=getattr(base, name))
            continue
        try:
            kwargs[name] = _coerce(value, tp, key)
            check_value(f, kwargs[name], key)
        except ConfigError as e:
            raise _keyed(e, key) from None
    obj = dataclasses.replace(base, **kwargs)
    for f in fields(cls):  # defaults must satisfy choices and ranges too
        if f.name not in kwargs and not is_dataclass(hints[f.name]):
            check_value(f, getattr(obj, f.name), f"{prefix}{f.name}")
    if hasattr(obj, "check"):  # rules between fields, e.g. heads dividing the width
        obj.check(prefix)
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
    try:
        return key.strip(), load_strict(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = (getattr(e, "problem", None) or str(e)).splitlines()[0]
        raise ConfigError(f"--set {text}: the value is not valid YAML ({problem}); quote it, "
                          f"e.g. --set '{key.strip()}=\"...\"'.") from e


def load_config(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None, stage: str | None = None):
    """YAML file (optionally nested under the stage name) + overrides -> validated config.

    An invalid value from the file is reported with the file and line; one from --set as it was given.
    """
    data: dict = {}
    lines: dict[str, int] = {}
    nested = False
    if path:
        p = Path(path)
        loaded = read_yaml_mapping(p, "config file", "a mapping of options")
        lines = key_lines(p)
        nested = bool(stage and set(loaded) == {stage} and isinstance(loaded[stage], dict))
        data = loaded[stage] if nested else loaded
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    overridden = set()
    for key, value in items:
        where = resolve_key(cls, key, stage)
        _set_path(data, where, value)
        overridden.add(".".join(where))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        key = getattr(e, "key", None)
        if not path or key is None or key in overridden:
            raise
        line = lines.get(f"{stage}.{key}" if nested else key)
        raise ConfigError(f"config file '{path}'{f', line {line}' if line else ''}: {e}") from e


# ---------------------------------------------------------------- docs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))  # "|" would split a markdown table cell
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
        cells = [f"`{prefix}{f.name}`", _type_name(tp), f"`{default!r}`", allowed_text(f), f.metadata.get("help", "")]
        rows.append(f"| {' | '.join(cells)} |")
    return rows


TABLE_HEAD = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]


def options_markdown(configs: dict[str, type], recipe_stages: dict[str, type] | None = None) -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config classes by `posttrain config docs`; do not edit by hand.",
        "Set any option in a YAML file (`--config FILE.yaml`) or on the command line",
        "(`--set train.lr=1e-5`; a unique bare name such as `--set lr=1e-5` works too).",
        "A value outside its `allowed` range, a number that is not finite, or a key given twice",
        "in a YAML file is an error naming the key, the file and line (or `--set`) and the fix.",
        "",
    ]
    for stage, cls in configs.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines += [f"## `{stage}`", "", doc, "", *TABLE_HEAD, *options_table(cls), ""]
    if recipe_stages:
        lines += ["# Recipe stages", "",
                  "Keys of the recipe stages that have no `config:` section (docs/recipes.md); each",
                  "is written on the stage entry itself, e.g. `{name: world, stage: world, seed: 0}`.", ""]
        for stage, cls in recipe_stages.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            lines += [f"## `{stage}` (recipe stage)", "", doc, "", *TABLE_HEAD, *options_table(cls), ""]
    return "\n".join(lines)
