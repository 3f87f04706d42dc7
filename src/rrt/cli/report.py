"""Handler of `rrt aggregate`."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..report.aggregate import aggregate as aggregate_results


def aggregate(args) -> None:
    for flag, path in (("--variants", args.variants), ("--eval-dir", args.eval_dir)):
        if not Path(path).exists():
            raise UsageError(f"{flag} {path} does not exist")
    try:
        summary = aggregate_results(args.variants, args.paper, args.eval_dir, args.train_dir, args.tables, args.figures,
                            args.benchmarks)
    except FileNotFoundError as e:
        raise UsageError(f"missing result: {e.filename}") from None
    print(summary.to_markdown(index=False, floatfmt=".2f"))
