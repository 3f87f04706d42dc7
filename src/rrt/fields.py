"""How a setting is declared and checked: the machinery behind rrt.settings' dataclasses.

`setting()` declares one key (type from the annotation; default, range, choices, help as
metadata); a `Section` dataclass checks its fields when made. `check` types a value,
`from_text` / `coerce_text` parse command-line text (Snakemake's `--config`, `rrt` flags),
`leaves` walks nested sections and `show` prints a default as config/README.md does.
The definitions themselves live in rrt.settings; the argparse side in rrt.flags.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import MISSING, field, fields

from .errors import UsageError


class SettingError(UsageError, ValueError):
    """A bad setting: one line naming the key (or flag) and the value. A UsageError for the
    CLI, a ValueError for library callers."""


# --- how a setting is declared ---------------------------------------------------------------
def setting(default=MISSING, help: str = "", *, min=None, max=None, above=None, below=None, choices=None,
            length=None, flag=None, workflow=True, expect=None, aliases=None):
    """A dataclass field that is one key. `min`/`max` are inclusive bounds, `above`/`below`
    exclusive ones (for a list: of each item); `choices` the allowed strings (of each item);
    `length` a list's exact length; `flag` the CLI flag when not `--key-name` (on a nested
    section: the whole section is that one flag, `KEY=VALUE` repeated); `workflow=False` for a
    key of the CLI alone; `expect` replaces the generated "must be ..." text; `aliases` maps
    words of the command line to values (`--tasks all`)."""
    meta = {"help": help, "min": min, "max": max, "above": above, "below": below, "choices": choices,
            "length": length, "flag": flag, "workflow": workflow, "expect": expect, "aliases": aliases}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """A dataclass of settings: its fields are checked when it is made (`__post_init__`), so
    a settings object in hand is a valid one, whoever built it."""

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, check(getattr(self, f.name), type_hints(type(self))[f.name], f.metadata, f.name))

    def to_dict(self, workflow: bool = False) -> dict:
        """Plain JSON-able values (lists, dicts); `workflow`: the workflow's keys alone."""
        return _plain(self, workflow)

    @classmethod
    def from_dict(cls, raw, name: str = "", workflow: bool = False):
        """The section from a mapping (JSON, YAML): defaults for the missing keys, one line
        naming `name.key` for an unknown key or a bad value."""
        return _build(cls, raw, name, workflow)


@functools.cache
def type_hints(cls) -> dict:
    return typing.get_type_hints(cls)




# --- checking values ---------------------------------------------------------------------------
def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _members(tp) -> list:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [t for t in typing.get_args(tp) if t is not type(None)]
    return [tp]


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(meta, number: str) -> str:
    lo = ("[", meta["min"]) if meta["min"] is not None else ("(", meta["above"]) if meta["above"] is not None else None
    hi = ("]", meta["max"]) if meta["max"] is not None else (")", meta["below"]) if meta["below"] is not None else None
    if lo and hi:
        return f"in {lo[0]}{_fmt(lo[1])}, {_fmt(hi[1])}{hi[0]}"
    if lo:
        return f"{number}{' ' if number else ''}{'>=' if lo[0] == '[' else '>'} {_fmt(lo[1])}"
    if hi:
        return f"{number}{' ' if number else ''}{'<=' if hi[0] == ']' else '<'} {_fmt(hi[1])}"
    return number


def expectation(tp, meta) -> str:
    """What a value of this key must be, in words: 'in [0, 1]', 'an integer >= 1', ..."""
    if meta.get("expect"):
        return meta["expect"]
    members = _members(tp)
    parts = []
    for t in members:
        origin = typing.get_origin(t)
        if t is bool:
            parts.append("true or false")
        elif t is int:
            parts.append(_range_text(meta, "an integer"))
        elif t is float:
            parts.append(_range_text(meta, "a finite number"))
        elif t is str:
            parts.append("one of " + ", ".join(meta["choices"]) if meta["choices"] else "a string")
        elif origin is list:
            item = expectation(typing.get_args(t)[0], {**meta, "expect": None})
            n = f"{meta['length']} " if meta["length"] else ""
            parts.append(f"a list of {n}strings" if item == "a string" else f"a list of {n}items, each {item}")
        elif origin is dict or dataclasses.is_dataclass(t):
            parts.append("a mapping")
        else:
            parts.append(getattr(t, "__name__", str(t)))
    text = " or ".join(parts)
    return text + (", or null" if _is_optional(tp) else "")


def _bad(name, tp, meta, value, shown=None):
    got = shown if shown is not None else (str(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                                          else repr(value))
    raise SettingError(f"{name} must be {expectation(tp, meta)}, got {got}")


def _in_range(x, meta) -> bool:
    if not math.isfinite(x):
        return False
    return ((meta["min"] is None or x >= meta["min"]) and (meta["max"] is None or x <= meta["max"])
            and (meta["above"] is None or x > meta["above"]) and (meta["below"] is None or x < meta["below"]))


def _scalar(value, t, meta, name):
    """A value of scalar type `t` (bool, int, float, str) checked, or TypeError/ValueError."""
    if t is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _in_range(value, meta):
                raise SettingError(f"{name} must be {_range_text(meta, '')}, got {value}")
            return value
        raise TypeError
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not _in_range(value, meta):
                raise SettingError(f"{name} must be {_range_text(meta, 'a finite number')}, got {value}")
            return value
        raise TypeError
    if t is str:
        if isinstance(value, str) and (not meta["choices"] or value in meta["choices"]):
            return value
        raise TypeError
    raise TypeError


def check(value, tp, meta, name, workflow: bool = False):
    """`value` as the key's type `tp`, checked against its range and choices: the value
    (ints as floats where a float is wanted) or a SettingError naming `name`."""
    if value is None:
        if _is_optional(tp):
            return None
        _bad(name, tp, meta, value)
    for t in _members(tp):
        origin = typing.get_origin(t)
        try:
            if origin is list:
                if not isinstance(value, (list, tuple)):
                    raise TypeError
                item_tp = typing.get_args(t)[0]
                if meta["length"] is not None and len(value) != meta["length"]:
                    raise TypeError
                out = []
                for x in value:
                    out.append(_scalar(x, item_tp, meta, name))
                return out
            if origin is dict:
                if not isinstance(value, dict):
                    raise TypeError
                value_tp = typing.get_args(t)[1]
                return {str(k): check(v, value_tp, NO_META, f"{name}.{k}", workflow) for k, v in value.items()}
            if dataclasses.is_dataclass(t):
                if isinstance(value, t):
                    return value
                return _build(t, value, name, workflow)
            return _scalar(value, t, meta, name)
        except (TypeError, ValueError) as e:
            if isinstance(e, SettingError) and len(_members(tp)) == 1:
                raise
            continue
    _bad(name, tp, meta, value)


NO_META = {k: None for k in ("help", "min", "max", "above", "below", "choices", "length", "flag", "expect",
                             "aliases")}


def _build(cls, raw, name: str, workflow: bool):
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise SettingError(f"{name or cls.__name__} must be a mapping of keys, got {raw!r}")
    known = {f.name: f for f in fields(cls) if f.metadata.get("workflow", True) or not workflow}
    for key in raw:
        if key not in known:
            raise SettingError(f"{_join(name, key)}: unknown key (known: {', '.join(known)})")
    hints = type_hints(cls)
    values = {}
    for key, f in known.items():
        if key in raw:
            values[key] = check(raw[key], hints[key], f.metadata, _join(name, key), workflow)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SettingError(f"{_join(name, key)}: required key missing")
    try:
        return cls(**values)
    except SettingError as e:  # a nested section's own key: name its path
        raise SettingError(f"{name}.{e}" if name and not str(e).startswith(name) else str(e)) from None


def _join(name: str, key: str) -> str:
    return f"{name}.{key}" if name else key


def _plain(value, workflow: bool):
    if isinstance(value, Section):
        return {f.name: _plain(getattr(value, f.name), workflow) for f in fields(value)
                if f.metadata.get("workflow", True) or not workflow}
    if isinstance(value, dict):
        return {k: _plain(v, workflow) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, workflow) for v in value]
    return value


# --- text (the command line) -----------------------------------------------------------------
_NULL_WORDS = ("null", "none", "None", "~", "")


def from_text(text: str, tp, meta, name: str):
    """A value of type `tp` from command-line text: numbers parsed, 'true'/'false', 'null',
    comma-separated lists ("0.9,0.95"); then checked as `check` does."""
    if not isinstance(text, str):
        return check(text, tp, meta, name)
    if meta.get("aliases") and text in meta["aliases"]:
        return check(copy.deepcopy(meta["aliases"][text]), tp, meta, name)
    if _is_optional(tp) and text in _NULL_WORDS:
        return None
    members = _members(tp)
    for t in members:
        try:
            parsed = _parse_text(text, t)
        except (TypeError, ValueError):
            continue
        try:
            return check(parsed, t, meta, name)
        except SettingError:
            if typing.get_origin(t) is list:
                _bad(name, tp, meta, text, shown=repr(text))
            if len(members) == 1:
                raise
    _bad(name, tp, meta, text, shown=repr(text))


def _parse_text(text: str, t):
    origin = typing.get_origin(t)
    if origin is list:
        item = typing.get_args(t)[0]
        return [_parse_text(x.strip(), item) for x in text.strip("[]").split(",")]
    if t is bool:
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise ValueError(text)
    if t is int:
        return int(text)
    if t is float:
        return float(text)
    if t is str:
        return text
    raise TypeError(t)


def coerce_text(cls, raw, name: str = ""):
    """`raw` (a part of a config, e.g. Snakemake's --config overrides, whose YAML values are
    all strings) with every string leaf parsed as its key's type; unknown keys are left for
    `from_dict` to name."""
    if not isinstance(raw, dict):
        return raw
    hints = type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in raw.items():
        f = by_name.get(key)
        out[key] = value if f is None else _coerce_value(value, hints[key], f.metadata, _join(name, key))
    return out


def _coerce_value(value, tp, meta, name):
    members = _members(tp)
    for t in members:
        origin = typing.get_origin(t)
        if dataclasses.is_dataclass(t) and isinstance(value, dict):
            return coerce_text(t, value, name)
        if origin is dict and isinstance(value, dict):
            value_tp = typing.get_args(t)[1]
            return {k: _coerce_value(v, value_tp, NO_META, f"{name}.{k}") for k, v in value.items()}
        if origin is list and isinstance(value, list):
            item = typing.get_args(t)[0]
            return [from_text(x, item, meta, name) if isinstance(x, str) and item is not str else x for x in value]
    if isinstance(value, str) and (str not in members or (meta.get("choices") and value not in meta["choices"])):
        return from_text(value, tp, meta, name)
    if isinstance(value, str) and _is_optional(tp) and value in ("null", "~"):
        return None
    return value


# --- walking sections ---------------------------------------------------------------------------
def merge(into: dict, over: dict) -> None:
    """Lay the nested mapping `over` onto `into` in place (mappings merged key by key)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def leaves(cls, prefix: str = "", workflow: bool = False, flags: bool = False):
    """(dotted path, type, metadata, default) of every key of `cls`, nested sections
    flattened; dict-valued keys (recipes, base models) as one leaf; with `flags`, a nested
    section that has a `flag` too (it is one flag of the command line)."""
    hints = type_hints(cls)
    for f in fields(cls):
        if workflow and not f.metadata.get("workflow", True):
            continue
        path = _join(prefix, f.name)
        tp = hints[f.name]
        inner = [t for t in _members(tp) if dataclasses.is_dataclass(t)]
        if inner and not (flags and f.metadata.get("flag")):
            yield from leaves(inner[0], path, workflow, flags)
        else:
            default = f.default if f.default_factory is MISSING else f.default_factory()
            yield path, tp, f.metadata, default


def show(value) -> str:
    """A default as `--help` and config/README.md print it: `none`, `true`, `` `text` ``, [1, 2], ..."""
    if value is MISSING:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:g}"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, Section):
        value = value.to_dict()
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {show(v).strip('`')}" for k, v in value.items())
        return "`{" + inner + "}`"
    if isinstance(value, list):
        return "[" + ", ".join(show(v).strip("`") for v in value) + "]"
    return str(value)
