"""`rrt` command-line flags from the settings dataclasses: one flag per key (`add_flags`),
parsed over a base section (`settings_from_args`), and the `--settings JSON` argument."""
from __future__ import annotations

import copy
import json
from dataclasses import MISSING

from .fields import SettingError, from_text, leaves, show


def flag_name(path: str, meta) -> str:
    """The CLI flag of the key at dotted `path`: its `flag` metadata or `--path-with-dashes`."""
    return meta.get("flag") or "--" + path.replace(".", "-").replace("_", "-")


def add_flags(parser, cls, skip=()) -> None:
    """One flag per key of `cls` (`--batch-tokens`, `--kd-loss`, ...), parsed later by
    `settings_from_args` (so an explicit flag is known from a default). Bools get --no-X."""
    import argparse

    for path, tp, meta, default in leaves(cls):
        if path in skip:
            continue
        flag = flag_name(path, meta)
        shown = show(default) if default is not MISSING else "required"
        help_text = f"{meta['help']} (default {shown})".replace("%", "%%")  # argparse formats help with %
        dest = "setting:" + path
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif meta.get("choices") and tp is str:
            parser.add_argument(flag, dest=dest, choices=meta["choices"], default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help_text,
                                metavar=flag.lstrip("-").replace("-", "_").upper())


def explicit_flags(args, cls) -> dict[str, str]:
    """{flag: text} of the flags of `cls` given on the command line."""
    given = {}
    for path, _, meta, _ in leaves(cls):
        if hasattr(args, "setting:" + path):
            given[flag_name(path, meta)] = getattr(args, "setting:" + path)
    return given


def settings_from_args(args, cls, base: dict | None = None, name: str = ""):
    """`cls` from `base` (e.g. a resolved section as JSON) with the flags given on the
    command line laid over it; a bad flag value is one line naming the flag."""
    merged = copy.deepcopy(base or {})
    base_obj = cls.from_dict(merged, name)  # the base alone: its errors name its keys
    merged = base_obj.to_dict()
    hints_by_path = {path: (tp, meta) for path, tp, meta, _ in leaves(cls)}
    for path, (tp, meta) in hints_by_path.items():
        if not hasattr(args, "setting:" + path):
            continue
        value = getattr(args, "setting:" + path)
        value = from_text(value, tp, meta, flag_name(path, meta)) if isinstance(value, str) else value
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

