"""`rrt` command-line flags from the settings dataclasses: one flag per key (`add_flags`),
parsed over a base section (`settings_from_args`), and the `--settings JSON|FILE` argument
that takes a whole resolved section (`add_settings`, `section_of`)."""
from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import MISSING, fields

from .fields import SettingError, from_text, leaves, show, type_hints


def flag_name(path: str, meta) -> str:
    """The CLI flag of the key at dotted `path`: its `flag` metadata or `--path-with-dashes`."""
    return meta.get("flag") or "--" + path.replace(".", "-").replace("_", "-")


def _wanted(path: str, keys, skip) -> bool:
    """Whether the key at `path` gets a flag: in `keys` (None: all), not in `skip`; a name
    there covers the keys nested under it."""
    def covers(names):
        return any(path == n or path.startswith(n + ".") for n in names)
    return (keys is None or covers(keys)) and not covers(skip)


def flag_leaves(cls, keys=None, skip=()):
    """(path, type, metadata, default) of the keys of `cls` that are flags."""
    return [leaf for leaf in leaves(cls, flags=True) if _wanted(leaf[0], keys, skip)]


def add_flags(parser, cls, skip=(), keys=None) -> None:
    """One flag per key of `cls` (`--batch-tokens`, `--kd-loss`, ...), parsed later by
    `settings_from_args` (so an explicit flag is known from a default). Bools get --no-X; a
    nested section with its own `flag` is one repeatable KEY=VALUE flag. `keys`: only these
    keys (a command that uses part of a section); `skip`: not these."""
    import argparse

    for path, tp, meta, default in flag_leaves(cls, keys, skip):
        flag = flag_name(path, meta)
        shown = show(default) if default is not MISSING else "required"
        also = f"; also {', '.join(meta['aliases'])}" if meta.get("aliases") else ""
        form = "; KEY=VALUE, repeatable, a list not named is empty" if dataclasses.is_dataclass(tp) else ""
        help_text = f"{meta['help']}{form} (default {shown}{also})".replace("%", "%%")  # argparse formats help with %
        dest = "setting:" + path
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif dataclasses.is_dataclass(tp):
            parser.add_argument(flag, dest=dest, action="append", default=argparse.SUPPRESS, help=help_text,
                                metavar="|".join(f.name for f in fields(tp)) + "=VALUE")
        elif meta.get("choices") and tp is str:
            parser.add_argument(flag, dest=dest, choices=meta["choices"], default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help_text,
                                metavar=flag.lstrip("-").replace("-", "_").upper())


def add_settings(parser, cls, section: str, skip=(), keys=None) -> None:
    """`--settings JSON|FILE` (the whole section `section`, e.g. the workflow's resolved one)
    and the section's flags, which override it (`section_of` reads both)."""
    parser.add_argument("--settings", default=None, metavar="JSON|FILE",
                        help=f"the `{section}` settings as one JSON object (inline or a file), e.g. the workflow's "
                             "resolved section; keys this command does not use are ignored; flags override it")
    add_flags(parser, cls, skip=skip, keys=keys)


def section_of(args, cls, section: str):
    """The command's settings: --settings JSON (else the defaults), each flag given laid over it."""
    base = load_json_arg(args.settings, "--settings") if args.settings is not None else None
    return settings_from_args(args, cls, base, section)


def explicit_flags(args, cls) -> dict[str, str]:
    """{flag: text} of the flags of `cls` given on the command line."""
    given = {}
    for path, _, meta, _ in leaves(cls, flags=True):
        if hasattr(args, "setting:" + path):
            given[flag_name(path, meta)] = getattr(args, "setting:" + path)
    return given


def section_from_pairs(values: list[str], cls, flag: str, aliases: dict | None = None):
    """A section given as repeated `KEY=VALUE` (`--exit-thresholds max_prob=0.5,0.9`): each
    value parsed as its key's type; the flag gives the whole section, so a list key it does
    not name is empty. A word of `aliases` (`none`) alone stands for its value."""
    if aliases and [v.strip() for v in values] in [[word] for word in aliases]:
        return cls.from_dict(copy.deepcopy(aliases[values[0].strip()]), flag)
    hints = type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    raw = {name: [] for name, tp in hints.items() if typing.get_origin(tp) is list}
    for text in values:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingError(f"{flag} expects KEY=VALUE with KEY in {', '.join(by_name)}, got {text!r}")
        if key not in by_name:
            raise SettingError(f"{flag}: unknown key {key!r} (known: {', '.join(by_name)})")
        raw[key] = from_text(value.strip(), hints[key], by_name[key].metadata, f"{flag} {key}")
    return cls.from_dict(raw, flag)


def settings_from_args(args, cls, base: dict | None = None, name: str = ""):
    """`cls` from `base` (e.g. a resolved section as JSON) with the flags given on the
    command line laid over it; a bad flag value is one line naming the flag."""
    merged = copy.deepcopy(base or {})
    base_obj = cls.from_dict(merged, name)  # the base alone: its errors name its keys
    merged = base_obj.to_dict()
    hints_by_path = {path: (tp, meta) for path, tp, meta, _ in leaves(cls, flags=True)}
    for path, (tp, meta) in hints_by_path.items():
        if not hasattr(args, "setting:" + path):
            continue
        value = getattr(args, "setting:" + path)
        flag = flag_name(path, meta)
        if dataclasses.is_dataclass(tp):
            value = section_from_pairs(value, tp, flag, meta.get("aliases")).to_dict()
        elif isinstance(value, str):
            value = from_text(value, tp, meta, flag)
        *parents, key = path.split(".")
        node = merged
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        node[key] = value
    try:
        return cls.from_dict(merged, name)
    except SettingError as e:
        message = str(e).removeprefix(f"{name}.") if name else str(e)
        raise SettingError(_flag_error(message, hints_by_path)) from None


def _flag_error(message: str, hints_by_path) -> str:
    """A nested section's error after flags were laid over it: name the flag, not the key."""
    for path, (_, meta) in hints_by_path.items():
        key = path.rsplit(".", 1)[-1]
        if message.startswith(path + ":") or message.startswith(path + " "):
            return flag_name(path, meta) + message[len(path):]
        if message.startswith(key + " ") and "." in path:
            return flag_name(path, meta) + message[len(key):]
    return message


def load_json_arg(text: str, flag: str) -> dict:
    """A JSON object given inline or as the path of a JSON file."""
    from pathlib import Path

    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise SettingError(f"{flag}: neither a JSON object nor a JSON file: {text!r}")
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as e:
        raise SettingError(f"{flag}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise SettingError(f"{flag}: expected a JSON object, got {value!r}")
    return value
