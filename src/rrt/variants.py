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
OPTIONAL = {"paper_ref": "-", "note": "", "warmup": "default", "parent": "-", "early_exit": "-", "throughput": "false"}
# A row with a `parent` trains on from the parent's trained model instead of a fresh
# conversion (early-exit post-training): it must be the same model, so these must match.
SAME_AS_PARENT = ("base", "kind", "init", "loops", "sharing", "rank")
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
    for column in ("kd", "throughput"):
        bad = table[column][~table[column].str.lower().isin(("true", "false"))].tolist()
        if bad:
            raise UsageError(f"{path}: {column} must be true or false, got {bad[0]!r}")
    bad_loops = table.loops[~table.loops.str.fullmatch(r"[0-9]+")].tolist()
    if bad_loops:
        raise UsageError(f"{path}: loops must be a positive integer, got {bad_loops[0]!r}")
    table["loops"] = table["loops"].astype(int)
    table["kd"] = table["kd"].str.lower().eq("true")
    table["throughput"] = table["throughput"].str.lower().eq("true")
    table = table.set_index("variant", drop=False)
    check_early_exit(table, path)
    return table


def check_early_exit(table: pd.DataFrame, path) -> None:
    """Rows with a `parent` or an `early_exit` recipe: the parent exists, is the same
    recursive model and no chain loops back; early-exit rows have several loops, train
    some tokens and take no teacher (their KD comes from their own final exit)."""
    for name, row in table.iterrows():
        if row.early_exit != "-":
            if row.kind != "recursive" or row.loops < 2:
                raise UsageError(f"{path}: variant {name!r}: early_exit needs a recursive variant with loops >= 2")
            if row.kd:
                raise UsageError(f"{path}: variant {name!r}: early_exit and kd cannot be combined (the exits "
                                 "distil from the model's own final exit)")
            if row.tokens == "0":
                raise UsageError(f"{path}: variant {name!r}: early_exit needs tokens > 0")
        if row.parent == "-":
            continue
        if row.parent not in table.index:
            raise UsageError(f"{path}: variant {name!r}: parent {row.parent!r} is not a variant")
        parent = table.loc[row.parent]
        for column in SAME_AS_PARENT:
            if str(row[column]) != str(parent[column]):
                raise UsageError(f"{path}: variant {name!r}: {column} {row[column]!r} differs from its parent "
                                 f"{row.parent!r} ({parent[column]!r})")
        if row.kind != "recursive" or row.tokens == "0":
            raise UsageError(f"{path}: variant {name!r}: a parent needs a recursive variant that trains (tokens > 0)")
        seen, at = {name}, row.parent
        while at != "-":
            if at in seen:
                raise UsageError(f"{path}: variant {name!r}: its parents loop back to {at!r}")
            seen.add(at)
            at = table.loc[at].parent

