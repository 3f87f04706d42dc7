"""Handler of `rrt plan`: what an experiment costs before it runs (`rrt.train.budget`).

Two ways in. `--resolved-config` takes the config the workflow's rules see (the `plan`
rule writes it: schema defaults filled in, `--config` overrides included) as it is, and
its variants table relative to the working directory, as the rules do. `--config` reads a
config file by hand: it is read as Snakemake reads it: validated against
`workflow/schemas/config.schema.yaml` with `snakemake.utils.validate(..., set_default=True)`,
which fills in the schema's defaults. The variants table path is taken relative to the
working directory (as the workflow does, from the repository root), else relative to the
config file's directory or its parent."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import validate

from ..errors import UsageError, first_line
from ..io import atomic_write_text
from ..settings import PLAN
from ..train.budget import format_plan, plan_budget
from ..variants import Experiment, read_variants
from . import checks

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def _validation_message(text: str) -> str:
    """One line from Snakemake's multi-line validation error: `key.path: message`."""
    message = re.search(r"ValidationError: (.*)", text)
    where = re.search(r"On instance((?:\[[^\]]*\])*)", text)
    keys = ".".join(k.strip("'\"") for k in re.findall(r"\[([^\]]*)\]", where.group(1))) if where else ""
    body = message.group(1) if message else first_line(Exception(text))
    return f"{keys}: {body}" if keys else body


def read_config(path: str | Path) -> dict:
    """A workflow config with the schema's defaults filled in, as Snakemake sees it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path} " + ("is a directory, not a YAML file" if path.is_dir() else "does not exist"))
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not YAML: {first_line(e)}") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config {path} is not a mapping of keys")
    if SCHEMA.is_file():
        try:
            validate(config, str(SCHEMA), set_default=True)
        except Exception as e:
            raise UsageError(f"{path}: {_validation_message(str(e))}") from None
    return config


def _variants_path(config: dict, config_path: Path) -> Path:
    name = Path(config["variants"])
    for candidate in (name, config_path.parent / name, config_path.parent.parent / name):
        if candidate.is_file():
            return candidate
    raise UsageError(f"{config_path}: variants table {name} does not exist")


def experiment_of(args) -> tuple[Experiment, str]:
    """The experiment `rrt plan` costs, and the config it came from (the plan's title)."""
    if args.resolved_config is not None:
        config = checks.resolved_config(args.resolved_config)
        return Experiment.from_config(config), str(args.resolved_config)
    config_path = Path(args.config)
    config = read_config(config_path)
    variants = _variants_path(config, config_path)
    return Experiment(config, read_variants(variants), variants), str(config_path)


def plan(args) -> None:
    if args.gpu is not None and args.gpu not in PLAN["gpu_specs"]:
        raise UsageError(f"--gpu: unknown GPU {args.gpu!r} (known: {', '.join(PLAN['gpu_specs'])})")
    if args.mfu is not None and not (math.isfinite(args.mfu) and 0 < args.mfu <= 1):
        raise UsageError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.out is not None:
        if Path(args.out).suffix not in (".csv", ".json"):
            raise UsageError(f"--out {args.out}: must end in .csv or .json")
        checks.output_file(args.out, "--out")
    if args.data_out is not None:
        if Path(args.data_out).suffix != ".csv":
            raise UsageError(f"--data-out {args.data_out}: must end in .csv")
        checks.output_file(args.data_out, "--data-out")
    experiment, title = experiment_of(args)
    table = plan_budget(experiment.config, experiment, gpu=args.gpu, mfu=args.mfu)
    print(format_plan(table, title=title))
    if args.out is not None:
        if Path(args.out).suffix == ".csv":
            atomic_write_text(args.out, table.to_csv(index=False))
        else:
            records = json.loads(table.to_json(orient="records"))
            atomic_write_text(args.out, json.dumps({"assumptions": table.attrs, "variants": records}, indent=1) + "\n")
        print(f"written to {args.out}")
    if args.data_out is not None:
        rows = [{"base": base, **cost} for base, cost in table.attrs["data"].items()]
        atomic_write_text(args.data_out, pd.DataFrame(rows).to_csv(index=False))
        print(f"written to {args.data_out}")
