"""The variants table (`config/variants.tsv`): one row per model that the workflow builds,
uptrains and evaluates. One reader, used by the workflow (`workflow/rules/common.smk`)
and by the report, so both see the same types and the same defaults for optional columns.
Column meanings: `config/README.md`; schema: `workflow/schemas/variants.schema.yaml`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import UsageError

REQUIRED = ("variant", "kind", "base", "init", "loops", "sharing", "rank", "kd", "tokens")
# Optional columns and the value a table without them gets.
OPTIONAL = {"paper_ref": "-", "note": "", "warmup": "default"}
KINDS = ("original", "full", "recursive", "reduced")


def read_variants(path: str | Path) -> pd.DataFrame:
    """The table indexed by variant name: loops as int, kd as bool, every optional column
    present. Errors name the file and the offending column, row or value."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"variants table {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: missing column {missing[0]!r}")
    for column, default in OPTIONAL.items():
        if column not in table.columns:
            table[column] = default
    duplicated = table.variant[table.variant.duplicated()].tolist()
    if duplicated:
        raise UsageError(f"{path}: duplicate variant name {duplicated[0]!r}")
    bad_kd = table.kd[~table.kd.str.lower().isin(("true", "false"))].tolist()
    if bad_kd:
        raise UsageError(f"{path}: kd must be true or false, got {bad_kd[0]!r}")
    bad_loops = table.loops[~table.loops.str.fullmatch(r"[0-9]+")].tolist()
    if bad_loops:
        raise UsageError(f"{path}: loops must be a positive integer, got {bad_loops[0]!r}")
    table["loops"] = table["loops"].astype(int)
    table["kd"] = table["kd"].str.lower().eq("true")
    return table.set_index("variant", drop=False)
