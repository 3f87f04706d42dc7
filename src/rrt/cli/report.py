"""Handler of `rrt aggregate`."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..report.aggregate import aggregate as aggregate_results
from . import checks


def aggregate(args) -> None:
    for flag, path in (("--variants", args.variants), ("--eval-dir", args.eval_dir), ("--paper", args.paper),
                       ("--paper-throughput", args.paper_throughput), ("--dlt-reference", args.dlt_reference)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag} {path} does not exist")
    for flag, path in (("--variants", args.variants), ("--paper", args.paper), ("--paper-throughput", args.paper_throughput),
                       ("--dlt-reference", args.dlt_reference)):
        if path is not None and Path(path).is_dir():
            raise UsageError(f"{flag} {path} is a directory, not a TSV file")
    for flag, path in (("--eval-dir", args.eval_dir), ("--train-dir", args.train_dir),
                       ("--benchmarks", args.benchmarks), ("--throughput-dir", args.throughput_dir),
                       ("--simulate-dir", args.simulate_dir)):
        if path is not None and Path(path).is_file():
            raise UsageError(f"{flag} {path} is a file, not a directory")
    for flag, path in (("--tables", args.tables), ("--figures", args.figures)):
        checks.output_dir(path, flag)
    train_settings = None
    if args.train_settings:
        try:
            train_settings = json.loads(args.train_settings)
        except json.JSONDecodeError as e:
            raise UsageError(f"--train-settings is not JSON: {e}") from None
    config = checks.resolved_config(args.resolved_config) if args.resolved_config is not None else None
    try:
        with checks.removed_on_error(args.tables, args.figures):
            summary = aggregate_results(args.variants, args.paper, args.eval_dir, args.train_dir, args.tables,
                                        args.figures, args.benchmarks, train_settings,
                                        args.throughput_dir, config, args.simulate_dir, args.paper_throughput,
                                        args.dlt_reference)
    except FileNotFoundError as e:
        raise UsageError(f"missing result: {e.filename}") from None
    print(summary.to_markdown(index=False, floatfmt=".2f"))
