"""The variants of an experiment: the variants table (`config/variants.tsv`, one row per
model that the workflow builds, uptrains and evaluates) read against its workflow config.

The one place that knows, per variant, its token budget, whether it trains, where its
start and final models live, its parent, and every consistency check of the table. The
workflow (`workflow/rules/common.smk`), `rrt plan` and the report all go through it.

    experiment = Experiment.from_config(config)      # config: the resolved workflow config
    v = experiment["rec-stepwise-ee"]
    v.tokens, v.trains, v.init_dir, v.final_dir, v.parent

Column meanings: `config/README.md`. Model directories are relative to the workflow's
working directory (Snakemake's `-d`, the repository root by default)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import UsageError
from .settings import DLT_BUDGETS, INITS, KD_KINDS, LORA_INITS, NORM_INITS, REDUCED_INITS, SHARINGS, STEPWISE_RULES

REQUIRED = ("variant", "kind", "base", "init", "loops", "sharing", "rank", "kd", "tokens")
# Optional columns and the value a table without them gets.
OPTIONAL = {"paper_ref": "-", "note": "", "warmup": "default", "parent": "-", "early_exit": "-", "throughput": "false",
            "parent_data": "-"}
# A row with a `parent` trains on from the parent's trained model instead of a fresh
# conversion (early-exit post-training): it must be the same model, so these must match.
SAME_AS_PARENT = ("base", "kind", "init", "loops", "sharing", "rank")
KINDS = ("original", "full", "recursive", "reduced", "dlt")
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
# Allowed values of the free-text-looking columns: (regex, what a user should write).
PATTERNS = {
    "variant": (NAME, "letters, digits and -_. (a file name)"),
    "rank": (r"[0-9]+|full", "a LoRA rank per depth: 0 for none, a number, or full"),
    "tokens": (r"[0-9]+|default", "a number of tokens or default"),
    "warmup": (r"[0-9]+|default", "a number of steps or default"),
    "parent": (rf"-|{NAME}", "a variant's name or -"),
}
# parent_data: a row with a parent trains on blocks its parents did not (new, the default)
# or on the parent's own blocks again (overlap: the paper's "overlapping data" row).
PARENT_DATA = ("new", "overlap")
CHOICES = {"kind": KINDS, "init": ("-", *INITS), "sharing": ("-", *SHARINGS), "parent_data": ("-", *PARENT_DATA)}
# Ablation columns (optional; `-`: as without the column). The conversion's choices, passed
# to `rrt convert` (a child of a parent must repeat them), and the variant's KD loss.
CONVERT_COLUMNS = ("lora_init", "rank_attn", "rank_mlp", "stepwise_rule", "norm_init")
OPTIONAL.update({column: "-" for column in (*CONVERT_COLUMNS, "kd_loss")})
SAME_AS_PARENT += CONVERT_COLUMNS
PATTERNS.update({column: (r"-|[0-9]+|full", "a LoRA rank per depth for this module group, or - for the rank column")
                 for column in ("rank_attn", "rank_mlp")})
CHOICES.update({"lora_init": ("-", *LORA_INITS), "stepwise_rule": ("-", *STEPWISE_RULES),
                "norm_init": ("-", *NORM_INITS), "kd_loss": ("-", *KD_KINDS)})
# Dynamic Layer Tying (kind `dlt`, docs/dlt.md): the columns of a DLT run and the field of
# the train settings' `dlt` section each one sets (`Variant.dlt_settings`; `-`: the
# trainer's default). The one place the table meets `rrt train`'s DLT settings.
DLT_COLUMNS = {"dlt_max_unique": "max_unique", "dlt_interval": "interval", "dlt_budget": "budget"}
DLT_INITS = ("-", "scratch")  # the base's weights (uptraining), or random ones (from scratch)
OPTIONAL.update({column: "-" for column in DLT_COLUMNS})
PATTERNS.update({
    "dlt_max_unique": (r"-|[1-9][0-9]*", "the most unique layers the agent may keep (K >= 1), or - for no budget"),
    "dlt_interval": (r"-|[1-9][0-9]*", "optimizer steps between the agent's decisions (>= 1), or - for the default"),
})
CHOICES["dlt_budget"] = ("-", *DLT_BUDGETS)
# Which rows an ablation column applies to: (check on the row, what it needs).
ABLATION_NEEDS = {
    "lora_init": (lambda row: row.kind == "recursive", "a recursive variant"),
    "rank_attn": (lambda row: row.kind == "recursive", "a recursive variant"),
    "rank_mlp": (lambda row: row.kind == "recursive", "a recursive variant"),
    "stepwise_rule": (lambda row: row.init == "stepwise", "init stepwise"),
    "norm_init": (lambda row: row.init == "average", "init average"),
    "kd_loss": (lambda row: bool(row.kd), "kd true"),
    "dlt_max_unique": (lambda row: row.kind == "dlt", "kind dlt"),
    "dlt_interval": (lambda row: row.kind == "dlt", "kind dlt"),
    "dlt_budget": (lambda row: row.kind == "dlt" and row.dlt_max_unique != "-", "kind dlt and a dlt_max_unique"),
}


def base_dir(base: str) -> str:
    """Where the workflow puts base model `base` (downloaded or built)."""
    return f"results/models/base/{base}"


def converted_dir(name: str) -> str:
    """Where `rrt convert` / `rrt reduce` put variant `name`'s model before uptraining."""
    return f"results/models/init/{name}"


def trained_dir(name: str) -> str:
    """Where uptraining puts variant `name`'s final model."""
    return f"results/train/{name}/final"


@dataclass(frozen=True)
class Variant:
    """One row of the variants table, resolved against the workflow config.

    `init` and `sharing` are the table's values (`-`: none); `tokens` is the uptraining
    budget (`default` resolved to `train.tokens`; a variant that does not train keeps the
    number asked for, see `trains`); `warmup_steps` None means the config's warmup."""

    name: str
    kind: str                 # original, full, recursive, reduced or dlt
    base: str                 # a key of the config's base_models
    init: str
    loops: int
    sharing: str
    rank: str                 # LoRA rank per depth: "0", a number, or "full"
    kd: bool                  # distil from the base model while uptraining
    tokens: int
    warmup_steps: int | None
    parent: str | None        # the variant whose trained model this one trains on from
    early_exit: str | None    # the early-exit recipe (early_exit.recipes) its uptraining uses
    throughput: bool          # measure its serving throughput
    paper_ref: str = "-"
    note: str = ""
    init_dir: str = ""        # the model uptraining starts from: the base, converted, or the parent's
    parent_data: str | None = None  # with a parent: "new" (blocks its parents did not draw) or "overlap"
    # ablation columns, `-`: as without them (config/README.md)
    lora_init: str = "-"      # svd or zero
    rank_attn: str = "-"      # LoRA rank of the attention linears (- : rank)
    rank_mlp: str = "-"       # LoRA rank of the MLP linears (- : rank)
    stepwise_rule: str = "-"  # ends or start
    norm_init: str = "-"      # average, first or unit
    kd_loss: str = "-"        # fkl, rkl, jsd or tvd (- : train.kd.loss)
    dlt_max_unique: str = "-"  # dlt: the unique-layer budget K (- : none)
    dlt_interval: str = "-"    # dlt: optimizer steps between decisions (- : the trainer's default)
    dlt_budget: str = "-"      # dlt with a K: at_most or exactly (- : the trainer's default)

    @property
    def dlt_settings(self) -> dict | None:
        """The keys this variant sets in the `dlt` section of its `rrt train --settings` (None:
        not a DLT run): `enabled`, and each DLT column that is set, under its settings name
        (`DLT_COLUMNS`); the section's other keys are the config's `train.dlt`."""
        if self.kind != "dlt":
            return None
        values = {key: getattr(self, column) for column, key in DLT_COLUMNS.items() if getattr(self, column) != "-"}
        return {"enabled": True, **{key: int(v) if str(v).isdigit() else v for key, v in values.items()}}

    @property
    def convert_options(self) -> dict[str, str]:
        """The ablation columns `rrt convert` takes, those set (its flag: `--` + key with -)."""
        return {c: getattr(self, c) for c in CONVERT_COLUMNS if getattr(self, c) != "-"}

    @property
    def ranks(self) -> tuple[str, str]:
        """The LoRA ranks of the attention and MLP linears ("0", a number or "full")."""
        return tuple(self.rank if r == "-" else r for r in (self.rank_attn, self.rank_mlp))

    @property
    def trains(self) -> bool:
        """Whether the variant is uptrained (an original never is; 0 tokens means as converted)."""
        return self.kind != "original" and self.tokens > 0

    @property
    def final_dir(self) -> str:
        """The model that is evaluated: the base as is, the uptrained one, or (0 tokens)
        the one uptraining would start from."""
        if self.kind == "original":
            return base_dir(self.base)
        return trained_dir(self.name) if self.trains else self.init_dir

    @property
    def converted(self) -> bool:
        """Whether its model is made by `rrt convert` or `rrt reduce` (not its parent's)."""
        return (self.kind in ("recursive", "reduced") or self.from_scratch) and self.parent is None

    @property
    def from_scratch(self) -> bool:
        """A DLT run from random weights of its base's architecture (`init: scratch`: built by
        `rrt reduce --loops 1 --init scratch`, like the untied `reduced` baseline with loops 1)."""
        return self.kind == "dlt" and self.init == "scratch"

    @property
    def exits(self) -> int:
        """Exits trained: every loop's with an early-exit recipe, else the final one."""
        return self.loops if self.early_exit is not None else 1


def read_variants(path: str | Path) -> pd.DataFrame:
    """The table indexed by variant name: loops as int, kd and throughput as bool, every
    optional column present, every row checked (`check_table`). Errors name the file and
    the offending column, row or value."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"variants table {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: missing column {missing[0]!r}")
    for column in ("kd", "throughput"):
        if column not in table.columns:
            continue
        bad = table[~table[column].str.lower().isin(("true", "false"))]
        if len(bad):
            raise UsageError(f"{path}: variant {bad.variant.iloc[0]!r}: {column} must be true or false, "
                             f"got {bad[column].iloc[0]!r}")
        table[column] = table[column].str.lower().eq("true")
    bad = table[~table.loops.str.fullmatch(r"[0-9]+")]
    if len(bad):
        raise UsageError(f"{path}: variant {bad.variant.iloc[0]!r}: loops must be a positive integer, "
                         f"got {bad.loops.iloc[0]!r}")
    table["loops"] = table["loops"].astype(int)
    table = _complete(table)
    check_table(table, path)
    return table


def _complete(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every optional column (its default where absent), indexed by name."""
    table = table.copy()
    for column, default in OPTIONAL.items():
        if column not in table.columns:
            table[column] = default == "true" if column == "throughput" else default
    return table.set_index("variant", drop=False)


def check_table(table: pd.DataFrame, path) -> None:
    """The checks of a table (indexed by name, optional columns present) that need no
    config: names unique, each column's values allowed, and the rows with a `parent` or
    an `early_exit` recipe: the parent exists, is the same recursive model that trains,
    and no chain loops back; early-exit rows have several loops, train some tokens and
    take no teacher (their KD comes from their own final exit)."""
    duplicated = table.variant[table.variant.duplicated()].tolist()
    if duplicated:
        raise UsageError(f"{path}: duplicate variant name {duplicated[0]!r}")
    for name, row in zip(table.variant, table.itertuples(index=False)):
        for column, (pattern, meaning) in PATTERNS.items():
            value = str(getattr(row, column))
            if not re.fullmatch(pattern, value):
                raise UsageError(f"{path}: variant {name!r}: {column} {value!r} does not match {pattern} ({meaning})")
        for column, allowed in CHOICES.items():
            value = getattr(row, column)
            if value not in allowed:
                raise UsageError(f"{path}: variant {name!r}: {column} {value!r} is not one of {', '.join(allowed)}")
        if int(row.loops) < 1:
            raise UsageError(f"{path}: variant {name!r}: loops must be a positive integer, got {row.loops!r}")
        if row.kind == "recursive" and row.init == "-":
            raise UsageError(f"{path}: recursive variant {name!r} needs an init")
        if row.kind == "recursive" and row.sharing == "-":
            raise UsageError(f"{path}: variant {name!r}: recursive needs a sharing ({', '.join(SHARINGS)})")
        for column, (applies, needs) in ABLATION_NEEDS.items():
            if getattr(row, column) != "-" and not applies(row):
                raise UsageError(f"{path}: variant {name!r}: {column} {getattr(row, column)!r} needs {needs}")
        if row.kind == "dlt":
            _check_dlt_row(row, name, path)
        if row.kind == "reduced" and row.init not in REDUCED_INITS:
            raise UsageError(f"{path}: variant {name!r}: init {row.init!r} of a reduced variant is not one of "
                             f"{', '.join(REDUCED_INITS)}")
    for name, row in table.iterrows():
        if row.early_exit != "-":
            if row.kind != "recursive" or int(row.loops) < 2:
                raise UsageError(f"{path}: variant {name!r}: early_exit needs a recursive variant with loops >= 2")
            if row.sharing == "middle":
                raise UsageError(f"{path}: variant {name!r}: early_exit needs cycle or sequence sharing, not middle "
                                 "(its loops do not end at every L/B depths)")
            if row.kd:
                raise UsageError(f"{path}: variant {name!r}: early_exit and kd cannot be combined (the exits "
                                 "distil from the model's own final exit)")
            if str(row.tokens) == "0":
                raise UsageError(f"{path}: variant {name!r}: early_exit needs tokens > 0")
        if row.parent == "-":
            if row.parent_data != "-":
                raise UsageError(f"{path}: variant {name!r}: parent_data {row.parent_data!r} needs a parent "
                                 "(- without one)")
            continue
        if row.parent not in table.index:
            raise UsageError(f"{path}: variant {name!r}: parent {row.parent!r} is not a variant")
        parent = table.loc[row.parent]
        for column in SAME_AS_PARENT:
            mine, theirs = (v.item() if hasattr(v, "item") else v for v in (row[column], parent[column]))  # numpy
            if str(mine) != str(theirs):
                raise UsageError(f"{path}: variant {name!r}: {column} {mine!r} differs from its parent "
                                 f"{row.parent!r} ({theirs!r})")
        if row.kind != "recursive" or str(row.tokens) == "0":
            raise UsageError(f"{path}: variant {name!r}: a parent needs a recursive variant that trains (tokens > 0)")
        seen, at = {name}, row.parent
        while at != "-":
            if at in seen:
                raise UsageError(f"{path}: variant {name!r}: its parents loop back to {at!r}")
            seen.add(at)
            at = table.loc[at].parent


def _check_dlt_row(row, name: str, path) -> None:
    """A DLT row trains one untied stack of the base's layers (the agent ties them while
    training): no loops, sharing, LoRA, teacher or parent of its own; it starts from the
    base's weights or from random ones (`init: scratch`)."""
    if row.init not in DLT_INITS:
        raise UsageError(f"{path}: variant {name!r}: init {row.init!r} of a dlt variant is not one of "
                         f"{', '.join(DLT_INITS)} (- : the base's weights, scratch: random weights)")
    fixed = {"loops": "1", "sharing": "-", "rank": "0", "kd": "False", "parent": "-"}
    for column, value in fixed.items():
        if str(getattr(row, column)) != value:
            raise UsageError(f"{path}: variant {name!r}: a dlt variant needs {column} "
                             f"{'false' if value == 'False' else value}, got {getattr(row, column)!r}")
    if str(row.tokens) == "0":
        raise UsageError(f"{path}: variant {name!r}: a dlt variant needs tokens > 0 (the agent decides while training)")
    if row.throughput:
        raise UsageError(f"{path}: variant {name!r}: throughput needs a recursive or full-size model; a learned "
                         "tying map need not be a loop, which the depth-wise engine serves (set throughput false)")


class Experiment:
    """The variants of one workflow config, in table order. `config` is a resolved
    workflow config (defaults filled in, as Snakemake hands it to the rules): this reads
    `base_models`, `train.tokens`, `early_exit.recipes` and `data.max_train_tokens`.
    `table` is `read_variants`' table (or one built in code with the required columns);
    `source` names it in errors (the variants file)."""

    def __init__(self, config: dict, table: pd.DataFrame, source: str | Path = "variants table"):
        self.config, self.source = config, str(source)
        self.table = _complete(table)
        check_table(self.table, self.source)
        self._check_against_config()
        self.variants: dict[str, Variant] = {}
        for name in self.table.index:
            self._resolve(name)
        self.variants = {name: self.variants[name] for name in self.table.index}  # table order
        self._check_new_data()

    @classmethod
    def from_config(cls, config: dict) -> Experiment:
        """The experiment of a resolved config: its `variants` table, relative to the working directory."""
        return cls(config, read_variants(config["variants"]), config["variants"])

    def _check_against_config(self) -> None:
        bases = self.config.get("base_models") or {}
        recipes = self.config["early_exit"]["recipes"]
        for name, row in self.table.iterrows():
            if row.base not in bases:
                raise UsageError(f"{self.source}: variant {name!r} uses base {row.base!r}, not in base_models "
                                 f"({', '.join(bases) or 'none'})")
            if row.early_exit != "-" and row.early_exit not in recipes:
                raise UsageError(f"{self.source}: variant {name!r}: early_exit recipe {row.early_exit!r} is not in "
                                 f"early_exit.recipes ({', '.join(recipes)})")

    def _check_new_data(self) -> None:
        """A run on new data needs the tokens its parents drew and its own, within the cap."""
        cap = (self.config.get("data") or {}).get("max_train_tokens")
        for v in self:
            if cap is not None and v.trains and self.data_after(v.name) and self.data_tokens(v.name) > int(cap):
                raise UsageError(f"{self.source}: variant {v.name!r}: new data needs {self.data_tokens(v.name)} "
                                 f"tokens ({' + '.join(map(str, self.data_after(v.name)))} drawn before, "
                                 f"{v.tokens} its own), above data.max_train_tokens {cap} (or set parent_data: overlap)")

    def _resolve(self, name: str) -> Variant:
        """Variant `name`, its parents first (their final model is its start)."""
        if name in self.variants:
            return self.variants[name]
        row = self.table.loc[name]
        tokens = int(self.config["train"]["tokens"]) if str(row.tokens) == "default" else int(row.tokens)
        parent = None if row.parent == "-" else row.parent
        if row.kind in ("original", "full") or (row.kind == "dlt" and row.init != "scratch"):
            start = base_dir(row.base)
        elif parent is not None:
            start = self._resolve(parent).final_dir
        else:
            start = converted_dir(name)
        self.variants[name] = Variant(
            name=name, kind=row.kind, base=row.base, init=row.init, loops=int(row.loops), sharing=row.sharing,
            rank=str(row["rank"]), kd=bool(row.kd), tokens=tokens,
            warmup_steps=None if row.warmup == "default" else int(row.warmup), parent=parent,
            early_exit=None if row.early_exit == "-" else row.early_exit, throughput=bool(row.throughput),
            parent_data=None if parent is None else ("new" if row.parent_data == "-" else row.parent_data),
            paper_ref=row.paper_ref, note=row.note, init_dir=start,
            **{column: row[column] for column in (*CONVERT_COLUMNS, "kd_loss", *DLT_COLUMNS)})
        return self.variants[name]

    # --- lookups ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            raise UsageError(f"{self.source}: no variant {name!r}") from None

    def __iter__(self):
        return iter(self.variants.values())

    def __len__(self) -> int:
        return len(self.variants)

    def __contains__(self, name: str) -> bool:
        return name in self.variants

    @property
    def names(self) -> list[str]:
        return list(self.variants)

    @property
    def bases(self) -> list[str]:
        """The base models the variants use, in table order."""
        return list(dict.fromkeys(v.base for v in self))

    def recipe(self, name: str) -> dict | None:
        """The early-exit recipe variant `name` trains with (None without one)."""
        v = self[name]
        return None if v.early_exit is None else self.config["early_exit"]["recipes"][v.early_exit]

    def post_trained(self, name: str) -> bool:
        """Whether an early-exit variant trains on from variant `name`'s model."""
        return any(v.parent == name and v.early_exit is not None for v in self)

    def exit_evaluated(self, name: str) -> bool:
        """Whether variant `name` is evaluated at every exit: early-exit variants and the
        variants they post-train."""
        return self[name].early_exit is not None or self.post_trained(name)

    def throughput_variants(self) -> list[str]:
        return [v.name for v in self if v.throughput]

    def largest_budget(self, base: str) -> int:
        """The most tokens any variant of `base` trains on (0 when none trains)."""
        return max((v.tokens for v in self if v.base == base and v.trains), default=0)

    def data_after(self, name: str) -> list[int]:
        """The token budgets of the runs whose blocks variant `name` leaves out (oldest
        first): with new data, its parent's own list plus the parent's budget (when it
        trains); with overlap, its parent's list (it draws the parent's blocks again); []
        without a parent."""
        v = self[name]
        if v.parent is None:
            return []
        before, parent = self.data_after(v.parent), self[v.parent]
        return before if v.parent_data == "overlap" or not parent.trains else before + [parent.tokens]

    def data_tokens(self, name: str) -> int:
        """Tokens of the train set that variant `name`'s run needs: its budget plus the
        budgets of the runs it leaves out."""
        return self[name].tokens + sum(self.data_after(name))

    def train_tokens_to_gather(self, base: str) -> int:
        """Tokens the tokenized train set of `base` must hold: the most any variant's run
        needs (`data_tokens`: new data counts its parents' budgets too), capped by
        data.max_train_tokens."""
        need = max((self.data_tokens(v.name) for v in self if v.base == base and v.trains), default=0)
        cap = (self.config.get("data") or {}).get("max_train_tokens")
        return min(need, int(cap)) if cap is not None else need

