"""The Snakemake arguments that rerun one variant and only its jobs (`make rerun`):
its evaluation (and throughput and its simulation, for rows with `throughput` true) as targets, then
`--forcerun` the one file the chosen step makes, so that step and what follows it run
again and nothing else: neither the other variants nor, for an early-exit row, its parent.
Targets come first: `--forcerun` takes several values and would swallow them.

    python workflow/scripts/rerun.py VARIANT [STEP] [CONFIG]   # STEP: convert|uptrain|evaluate
"""
import shlex
import sys
from pathlib import Path

import yaml

from rrt.variants import read_variants

STEPS = ("convert", "uptrain", "evaluate")


def rerun_args(name: str, step: str, config_file: str) -> list[str]:
    config = yaml.safe_load(Path(config_file).read_text())
    table = read_variants(config.get("variants", "config/variants.tsv"))
    if name not in table.index:
        raise SystemExit(f"make rerun: unknown VARIANT {name!r} (one of: {', '.join(table.index)})")
    if step not in STEPS:
        raise SystemExit(f"make rerun: unknown STEP {step!r} (one of: {', '.join(STEPS)})")
    row = table.loc[name]
    tokens = config["train"]["tokens"] if row.tokens == "default" else int(row.tokens)
    if step == "convert":
        if row.kind in ("original", "full") or row.parent != "-":
            start = "the base model" if row.parent == "-" else f"its parent {row.parent!r}'s model"
            raise SystemExit(f"make rerun: {name!r} has no conversion (it starts from {start}): use STEP=uptrain")
        forced = f"results/models/init/{name}"
    elif step == "uptrain":
        if row.kind == "original" or tokens == 0:
            raise SystemExit(f"make rerun: {name!r} is not uptrained (kind {row.kind}, {tokens} tokens): "
                             "use STEP=evaluate")
        forced = f"results/train/{name}/final"
    else:
        forced = f"results/eval/{name}.json"
    served = [f"results/throughput/{name}.json", f"results/simulate/{name}.json"] if row.throughput else []
    targets = [f"results/eval/{name}.json", *served]
    return [*targets, "--forcerun", forced]


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        raise SystemExit(__doc__.rstrip().splitlines()[-1].strip())
    variant_name, step, config_file = sys.argv[1], "uptrain", "config/config.yaml"
    if len(sys.argv) > 2 and sys.argv[2]:
        step = sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3]:
        config_file = sys.argv[3]
    print(shlex.join(rerun_args(variant_name, step, config_file)))
