"""Handler of `rrt eval`."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UsageError
from ..eval.evaluate import evaluate_model
from ..eval.harness_data import fetch, harness_datasets, plan_lines
from ..eval.tasks import DEFAULT_PROMPT_FORMAT, resolve_prompt_format
from ..flags import explicit_flags, section_of, settings_from_args
from ..model.load import load_config_dir
from ..settings import TASKS, EvalSettings
from . import checks
from .tokenizer_check import same_tokenizer


def _parse_pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{flag} expects NAME=VALUE, got {v!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _parse_prompt_formats(values: list[str] | None, tasks: list[str], source: str,
                          default: str = DEFAULT_PROMPT_FORMAT) -> tuple[dict[str, str], str]:
    """--prompt-format TASK=FORMAT pairs, or a bare FORMAT for every task (over `default`,
    the setting eval.prompt_format); checked against the prompts on disk (embedded only: the
    harness has no formats, so they are ignored)."""
    bare = [v for v in values or [] if "=" not in v]
    for v in bare:
        default = v.strip()
    pairs = _parse_pairs([v for v in values or [] if "=" in v], "--prompt-format")
    for t in pairs:
        if t not in TASKS:
            raise UsageError(f"--prompt-format: unknown task {t!r}; known: {', '.join(TASKS)}")
    if source == "embedded":
        for t in tasks:
            try:
                resolve_prompt_format(t, pairs.get(t, default))
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(f"--prompt-format: {e}") from None
    return pairs, default


def _check_ppl_set(name: str, path: str) -> None:
    p = Path(path)
    if (p / "index.json").is_file():  # blocks written by `rrt tokenize`
        return
    if not (p / "dataset_info.json").is_file() or not (p / "state.json").is_file():
        raise UsageError(f"--ppl {name}={path}: neither blocks written by `rrt tokenize` (index.json) nor a dataset saved with save_to_disk")
    features = json.loads((p / "dataset_info.json").read_text()).get("features", {})
    if "input_ids" not in features:
        raise UsageError(f"--ppl {name}={path}: no input_ids column (columns: {', '.join(features)})")


def criteria(thresholds) -> dict[str, list[float]]:
    """{criterion: [t, ...]} of an ExitThresholds-like section, the criteria without a threshold
    left out (they are not run)."""
    return {c: list(ts) for c, ts in thresholds.to_dict().items() if ts}


def evaluate(args) -> None:
    settings = section_of(args, EvalSettings, "eval")
    if {"--exit-thresholds", "--exit-task-thresholds"} & set(explicit_flags(args, EvalSettings)) and not args.exits:
        raise UsageError("--exit-thresholds and --exit-task-thresholds need --exits")
    load_config_dir(args.model, "--model")
    checks.check_weights(args.model, "--model")
    checks.output_file(args.out, "--out")
    if args.workdir is not None:
        checks.output_dir(args.workdir, "--workdir")
    ppl = _parse_pairs(args.ppl, "--ppl")
    for name, path in ppl.items():
        _check_ppl_set(name, path)
        same_tokenizer(args.model, "--model", path, f"--ppl {name}={path}")
    tasks = [t for t in TASKS if t in settings.tasks]  # the paper's order, each once
    formats, default = _parse_prompt_formats(args.prompt_format, tasks, settings.source, settings.prompt_format)
    if not ppl and not tasks:
        raise UsageError("nothing to evaluate: give --ppl NAME=DIR and/or --tasks")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.exits and not ppl:
        raise UsageError("--exits needs --ppl NAME=DIR (per-exit perplexity is measured on held-out sets)")
    if settings.data_cache is not None:
        if settings.source != "harness":
            raise UsageError("--data-cache needs --source harness (the embedded tasks read no hub data)")
        if not Path(settings.data_cache).is_dir():
            raise UsageError(f"--data-cache {settings.data_cache}: no such directory (fill it with "
                             f"`rrt fetch-eval-data --cache {settings.data_cache}` where the hub is reachable)")
    result = evaluate_model(args.model, args.out, ppl, tasks, settings.source, settings.limit, settings.batch_size,
                            args.workdir, formats, default, exits=args.exits,
                            exit_thresholds=criteria(settings.exit_thresholds),
                            exit_task_thresholds=criteria(settings.exit_task_thresholds),
                            precision=settings.precision, data_cache=settings.data_cache)
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("ppl_", "acc_"))}, indent=1))


def fetch_data(args) -> None:
    """`rrt fetch-eval-data`: the plan, or the fetch, of the stock tasks' datasets."""
    chosen = settings_from_args(args, EvalSettings, None, "eval").tasks
    tasks = [t for t in TASKS if t in chosen]
    if not tasks:
        raise UsageError("--tasks: nothing to fetch")
    specs = harness_datasets(tasks)
    if args.dry_run:
        print(f"would fetch {len(specs)} datasets for lm-eval's stock tasks into {Path(args.cache).resolve()}:")
        print("\n".join(plan_lines(specs, Path(args.cache).resolve())))
        return
    cache = checks.output_dir(args.cache, "--cache")
    fetch(specs, cache)
    print(f"evaluate offline with: HF_DATASETS_OFFLINE=1 rrt eval --source harness --data-cache {cache.resolve()} ...")
