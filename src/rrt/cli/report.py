"""Handler of `rrt aggregate`."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..report.aggregate import aggregate as aggregate_results


def aggregate(args) -> None:
    for flag, path in (("--variants", args.variants), ("--eval-dir", args.eval_dir)):
        if not Path(path).exists():
            raise UsageError(f"{flag} {path} does not exist")
    train_settings = None
    if args.train_settings:
        try:
            train_settings = json.loads(args.train_settings)
        except json.JSONDecodeError as e:
            raise UsageError(f"--train-settings is not JSON: {e}") from None
    try:
        summary = aggregate_results(args.variants, args.paper, args.eval_dir, args.train_dir, args.tables,
                                    args.figures, args.benchmarks, train_settings)
    except FileNotFoundError as e:
        raise UsageError(f"missing result: {e.filename}") from None
    print(summary.to_markdown(index=False, floatfmt=".2f"))
