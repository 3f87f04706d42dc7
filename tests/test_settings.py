"""One source of truth: the defaults and lists in rrt.settings agree with the workflow's
schemas, the CLI's flags and config/README.md; the library leaves the environment alone."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rrt import settings
from rrt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
VARIANTS_SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/variants.schema.yaml").read_text())
SECTIONS = {"data": settings.DATA, "train": settings.TRAIN, "eval": settings.EVAL, "plan": settings.PLAN,
            "early_exit": settings.EARLY_EXIT, "throughput": settings.THROUGHPUT}


def schema_defaults(section: str) -> dict:
    props = SCHEMA["properties"][section]["properties"]
    out = {}
    for key, spec in props.items():
        if spec.get("type") == "object" and "properties" in spec:
            out[key] = {k: v["default"] for k, v in spec["properties"].items() if "default" in v}
        elif "default" in spec:
            out[key] = spec["default"]
    return out


@pytest.mark.parametrize("section", list(SECTIONS))
def test_schema_defaults_are_the_settings(section):
    defaults = schema_defaults(section)
    for key, value in defaults.items():
        assert key in SECTIONS[section], f"{section}.{key} is in the schema but not in rrt.settings"
        assert SECTIONS[section][key] == value, f"{section}.{key}: schema {value!r}, settings {SECTIONS[section][key]!r}"


def test_schema_lists_are_the_settings():
    props = SCHEMA["properties"]
    assert tuple(props["eval"]["properties"]["tasks"]["items"]["enum"]) == settings.TASKS
    assert tuple(props["train"]["properties"]["kd"]["properties"]["loss"]["enum"]) == settings.KD_KINDS
    assert tuple(props["eval"]["properties"]["source"]["enum"]) == settings.EVAL_SOURCES
    assert tuple(props["data"]["properties"]["source"]["enum"]) == settings.DATA_SOURCES
    assert tuple(props["plan"]["properties"]["gpu"]["enum"]) == tuple(settings.PLAN["gpu_specs"])
    base = props["base_models"]["additionalProperties"]["properties"]["source"]["enum"]
    assert tuple(base) == settings.BASE_SOURCES
    recipe = props["early_exit"]["properties"]["recipes"]["additionalProperties"]["properties"]
    assert tuple(recipe["weights"]["oneOf"][0]["enum"]) == settings.EXIT_SCHEDULES
    row = VARIANTS_SCHEMA["properties"]
    assert tuple(row["init"]["enum"]) == ("-", *settings.INITS)
    assert tuple(row["sharing"]["enum"]) == ("-", *settings.SHARINGS)


def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def _defaults(name) -> dict:
    return {a.dest: a.default for a in _subparser(name)._actions}


def test_cli_defaults_are_the_settings():
    train = _defaults("train")
    for key in ("batch_tokens", "micro_batch_size", "lr", "warmup_steps", "warmup_ratio", "min_lr_ratio",
                "weight_decay", "save_steps", "log_steps", "seed", "gradient_checkpointing", "loss_chunk_tokens"):
        assert train[key] == settings.TRAIN[key], key
    assert train["max_tokens"] == settings.TRAIN["tokens"]
    assert train["adam_betas"] == ",".join(str(b) for b in settings.TRAIN["adam_betas"])
    data = {**_defaults("corpus"), **_defaults("tokenize")}
    for key in ("source", "seed", "heldout_docs", "ngram", "block_size", "max_train_tokens", "heldout_max_tokens",
                "hub_heldout_chars", "slimpajama", "redpajama", "pg19"):
        assert data[key] == settings.DATA[key], key
    ev = _defaults("eval")
    for key in ("source", "limit", "batch_size"):
        assert ev[key] == settings.EVAL[key], key
    gen = _defaults("generate")
    assert (gen["engine"], gen["max_new_tokens"], gen["max_batch"], gen["exit_kv"]) == (
        settings.SERVE["engine"], settings.SERVE["max_new_tokens"], settings.SERVE["max_batch"],
        settings.SERVE["exit_kv"])
    assert {k: v for k, v in settings.EVAL.items() if k.startswith("exit_")} == {
        "exit_thresholds": settings.EVAL["exit_thresholds"], "exit_task_thresholds": settings.EVAL["exit_task_thresholds"]}


def _readme_defaults() -> dict[str, str]:
    """`key` -> default cell of the keys table in config/README.md."""
    text = (ROOT / "config/README.md").read_text()
    return {m[0]: m[1].strip() for m in re.findall(r"^\| `([a-z0-9_.]+)` \| ([^|]*) \|", text, re.M)}


def _as_readme(value) -> str:
    if isinstance(value, dict):
        return "`" + yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip() + "`"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_config_readme_documents_every_key_with_its_default():
    readme = _readme_defaults()
    for section in SECTIONS:
        for key, value in schema_defaults(section).items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    name = f"{section}.{key}.{sub}"
                    assert name in readme, f"config/README.md does not document {name}"
                    assert readme[name] == _as_readme(v), (name, readme[name], v)
                continue
            name = f"{section}.{key}"
            assert name in readme, f"config/README.md does not document {name}"
            if section == "eval" and key == "tasks":
                assert readme[name] == "all 7"
            else:
                assert readme[name] == _as_readme(value), (name, readme[name], value)


def test_importing_the_cli_leaves_the_environment_alone():
    """Offline mode belongs to the Makefile and the tests: the library never sets it, so the
    paper config's hub paths can reach the hub once the variables are unset."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    code = ("import os, rrt.cli, rrt.cli.model, rrt.cli.data, rrt.cli.train, rrt.cli.eval, rrt.cli.report; "
            "print(sorted(k for k in os.environ if k.endswith('_OFFLINE')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
