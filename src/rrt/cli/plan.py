"""Handler of `rrt plan`: what an experiment costs before it runs (`rrt.train.budget`).

Two ways in. `--resolved-config` takes the config the workflow's rules see (the `plan`
rule writes it: defaults filled in, `--config` overrides included) as it is, and its
variants table relative to the working directory, as the rules do. `--config` reads a
config file by hand, checked and its defaults filled in as the workflow does it, by
`rrt.settings.resolve_config`. The variants table path is taken relative to the
working directory (as the workflow does, from the repository root), else relative to the
config file's directory or its parent."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from ..errors import UsageError, first_line
from ..io import atomic_write_text
from ..flags import settings_from_args
from ..settings import PlanSettings, SettingError, resolve_config
from ..train.budget import format_plan, plan_budget
from ..variants import Experiment, read_variants
from . import checks


def read_config(path: str | Path) -> dict:
    """A workflow config with every default filled in, as the workflow sees it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path} " + ("is a directory, not a YAML file" if path.is_dir() else "does not exist"))
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not YAML: {first_line(e)}") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config {path} is not a mapping of keys")
    try:
        return resolve_config(config)
    except SettingError as e:
        raise UsageError(f"{path}: {e}") from None


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
    settings_from_args(args, PlanSettings, None, "plan")  # a bad flag is one line before any work
    if args.out is not None:
        if Path(args.out).suffix not in (".csv", ".json"):
            raise UsageError(f"--out {args.out}: must end in .csv or .json")
        checks.output_file(args.out, "--out")
    if args.data_out is not None:
        if Path(args.data_out).suffix != ".csv":
            raise UsageError(f"--data-out {args.data_out}: must end in .csv")
        checks.output_file(args.data_out, "--data-out")
    experiment, title = experiment_of(args)
    try:  # the flags given, laid over the config's plan section
        section = settings_from_args(args, PlanSettings, experiment.config.get("plan") or {}, "plan")
    except SettingError as e:
        raise UsageError(f"{title}: {e}") from None
    experiment.config["plan"] = section.to_dict()
    table = plan_budget(experiment.config, experiment, gpu=section.gpu, mfu=section.mfu)
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
