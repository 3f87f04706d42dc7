"""The variant model (`rrt.variants`): each variant's token budget, whether it trains, its
start and final model directories, parent chains, and every consistency check of the
table as a one-line error naming the file, the variant and the column. Then the `plan`
rule: `rrt plan` costs the config the rules see, `--config` overrides included, and the
package imports no snakemake."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rrt.cli import main
from rrt.errors import UsageError
from rrt.variants import CHOICES, KINDS, PATTERNS, REQUIRED, Experiment, read_variants

from .conftest import cli_error

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
HEADER = "variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\tparent\tearly_exit\twarmup\tthroughput\n"
ROWS = [
    "orig\toriginal\tg\t-\t1\t-\t0\tfalse\tdefault\t-\t-\tdefault\ttrue",
    "full\tfull\tg\t-\t1\t-\t0\tfalse\tdefault\t-\t-\t7\tfalse",
    "rec\trecursive\tg\tstepwise\t2\tcycle\t0\tfalse\t1000\t-\t-\tdefault\ttrue",
    "rec0\trecursive\tg\taverage\t2\tcycle\t64\tfalse\t0\t-\t-\tdefault\tfalse",
    "red\treduced\tg\tscratch\t2\t-\t0\ttrue\tdefault\t-\t-\tdefault\tfalse",
    "ee\trecursive\tg\tstepwise\t2\tcycle\t0\tfalse\t300\trec\taggressive_kd\tdefault\ttrue",
    "ee2\trecursive\tg\tstepwise\t2\tcycle\t0\tfalse\t200\tee\taggressive\tdefault\tfalse",
    "other\tfull\th\t-\t1\t-\t0\tfalse\t5000\t-\t-\tdefault\tfalse",
]
RECIPES = {"aggressive_kd": {"weights": "aggressive", "kd_weight": 1.0},
           "aggressive": {"weights": "aggressive", "kd_weight": 0.0}}


def config(**data):
    return {"base_models": {"g": {"source": "tiny"}, "h": {"source": "tiny"}}, "train": {"tokens": 4096},
            "early_exit": {"recipes": RECIPES}, "data": {"max_train_tokens": None, **data}}


def experiment(tmp_path, rows=ROWS, cfg=None) -> Experiment:
    path = tmp_path / "variants.tsv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return Experiment({**(cfg or config()), "variants": str(path)}, read_variants(path), path)


def test_budgets_and_who_trains(tmp_path):
    e = experiment(tmp_path)
    assert [v.name for v in e] == ["orig", "full", "rec", "rec0", "red", "ee", "ee2", "other"]
    tokens = {v.name: (v.tokens, v.trains) for v in e}
    assert tokens == {"orig": (4096, False), "full": (4096, True), "rec": (1000, True), "rec0": (0, False),
                      "red": (4096, True), "ee": (300, True), "ee2": (200, True), "other": (5000, True)}
    assert e["full"].warmup_steps == 7 and e["rec"].warmup_steps is None
    assert e["red"].kd and not e["rec"].kd
    assert e.largest_budget("g") == 4096 and e.largest_budget("h") == 5000
    assert e.bases == ["g", "h"]
    assert experiment(tmp_path, cfg=config(max_train_tokens=2000)).train_tokens_to_gather("g") == 2000
    assert e.train_tokens_to_gather("g") == 4096
    only_original = experiment(tmp_path, rows=ROWS[:1])
    assert only_original.largest_budget("g") == 0


def test_model_directories(tmp_path):
    e = experiment(tmp_path)
    dirs = {v.name: (v.init_dir, v.final_dir) for v in e}
    assert dirs == {
        "orig": ("results/models/base/g", "results/models/base/g"),
        "full": ("results/models/base/g", "results/train/full/final"),
        "rec": ("results/models/init/rec", "results/train/rec/final"),
        "rec0": ("results/models/init/rec0", "results/models/init/rec0"),  # 0 tokens: evaluated as converted
        "red": ("results/models/init/red", "results/train/red/final"),
        "ee": ("results/train/rec/final", "results/train/ee/final"),      # trains on from its parent's model
        "ee2": ("results/train/ee/final", "results/train/ee2/final"),     # a chain: its parent's parent first
        "other": ("results/models/base/h", "results/train/other/final"),
    }
    assert [v.name for v in e if v.converted] == ["rec", "rec0", "red"]


def test_parents_early_exit_and_throughput(tmp_path):
    e = experiment(tmp_path)
    assert (e["ee"].parent, e["ee2"].parent, e["rec"].parent) == ("rec", "ee", None)
    assert (e["ee"].early_exit, e["rec"].early_exit) == ("aggressive_kd", None)
    assert (e["ee"].exits, e["rec"].exits) == (2, 1)
    assert e.recipe("ee2") == RECIPES["aggressive"] and e.recipe("rec") is None
    assert [n for n in e.names if e.post_trained(n)] == ["rec", "ee"]
    assert [n for n in e.names if e.exit_evaluated(n)] == ["rec", "ee", "ee2"]
    assert e.throughput_variants() == ["orig", "rec", "ee"]
    with pytest.raises(UsageError, match="variants.tsv: no variant 'nope'"):
        e["nope"]


def test_a_table_built_in_code_gets_the_optional_columns(tmp_path):
    table = pd.DataFrame([{"variant": "r", "kind": "recursive", "base": "g", "init": "lower", "loops": 3,
                           "sharing": "sequence", "rank": "full", "kd": False, "tokens": "default"}])
    v = Experiment(config(), table)["r"]
    assert (v.parent, v.early_exit, v.throughput, v.warmup_steps, v.tokens, v.rank) == (None, None, False, None,
                                                                                       4096, "full")


def _replace(row: str, **columns) -> str:
    names = HEADER.strip().split("\t")
    values = row.split("\t")
    for column, value in columns.items():
        values[names.index(column)] = value
    return "\t".join(values)


REC = ROWS[2]  # "rec": a recursive variant that trains
# The rows a bad row joins: the good ones whose checks do not involve "rec", and "p", a parent.
BESIDE = [r for r in ROWS if r.split("\t")[0] in ("orig", "full", "rec0", "red", "other")] + [
    "p\trecursive\tg\tstepwise\t2\tcycle\t0\tfalse\tdefault\t-\t-\tdefault\tfalse"]
BAD_ROWS = [
    (_replace(REC, variant="x y"), "variant 'x y': variant 'x y' does not match"),
    (_replace(REC, kind="looped"), "variant 'rec': kind 'looped' is not one of original, full, recursive, reduced"),
    (_replace(REC, init="middle"), "variant 'rec': init 'middle' is not one of -, stepwise, average"),
    (_replace(REC, sharing="ring"), "variant 'rec': sharing 'ring' is not one of -, cycle, sequence"),
    (_replace(REC, rank="lots"), "variant 'rec': rank 'lots' does not match [0-9]+|full"),
    (_replace(REC, tokens="many"), "variant 'rec': tokens 'many' does not match [0-9]+|default"),
    (_replace(REC, warmup="soon"), "variant 'rec': warmup 'soon' does not match [0-9]+|default"),
    (_replace(REC, loops="0"), "variant 'rec': loops must be a positive integer, got 0"),
    (_replace(REC, loops="two"), "variant 'rec': loops must be a positive integer, got 'two'"),
    (_replace(REC, kd="yes"), "variant 'rec': kd must be true or false, got 'yes'"),
    (_replace(REC, throughput="1"), "variant 'rec': throughput must be true or false, got '1'"),
    (_replace(REC, init="-"), "recursive variant 'rec' needs an init"),
    (_replace(REC, sharing="-"), "variant 'rec': recursive needs a sharing (cycle, sequence, middle)"),
    (_replace(REC, kind="reduced", sharing="-", init="average"),
     "variant 'rec': init 'average' of a reduced variant is not one of lower, scratch"),
    (_replace(REC, base="nope"), "variant 'rec' uses base 'nope', not in base_models (g, h)"),
    (_replace(REC, early_exit="fast"), "variant 'rec': early_exit recipe 'fast' is not in early_exit.recipes "
                                       "(aggressive_kd, aggressive)"),
    (_replace(REC, early_exit="aggressive", loops="1"), "variant 'rec': early_exit needs a recursive variant with "
                                                        "loops >= 2"),
    (_replace(REC, early_exit="aggressive", kind="reduced", sharing="-", init="lower"),
     "variant 'rec': early_exit needs a recursive variant with loops >= 2"),
    (_replace(REC, early_exit="aggressive", kd="true"), "variant 'rec': early_exit and kd cannot be combined"),
    (_replace(REC, early_exit="aggressive", tokens="0"), "variant 'rec': early_exit needs tokens > 0"),
    (_replace(REC, parent="nope"), "variant 'rec': parent 'nope' is not a variant"),
    (_replace(REC, parent="rec0"), "variant 'rec': init 'stepwise' differs from its parent 'rec0' ('average')"),
    (_replace(REC, parent="p", loops="3"), "variant 'rec': loops 3 differs from its parent 'p' (2)"),
    (_replace(REC, parent="p", tokens="0"), "variant 'rec': a parent needs a recursive variant that trains"),
    (_replace(REC, parent="orig", kind="original", init="-", sharing="-", loops="1"),
     "variant 'rec': a parent needs a recursive variant that trains (tokens > 0)"),
    (_replace(REC, parent="rec"), "variant 'rec': its parents loop back to 'rec'"),
    (_replace(REC, parent="again") + "\n" + _replace(REC, variant="again", parent="rec"),
     "variant 'rec': its parents loop back to 'rec'"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS, ids=[m.split(": ", 1)[-1][:40] for _, m in BAD_ROWS])
def test_each_bad_row_is_a_one_line_error_naming_file_variant_and_column(tmp_path, row, message):
    with pytest.raises(UsageError) as caught:
        experiment(tmp_path, rows=BESIDE + [row])
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'variants.tsv'}: ") and message in text and "\n" not in text, text


# --- ablation columns (`-`: as without the column) ---------------------------------------
ABLATIONS = ("lora_init", "rank_attn", "rank_mlp", "stepwise_rule", "norm_init", "kd_loss")


def ablation_experiment(tmp_path, *rows: str) -> Experiment:
    """The table with the ablation columns: each row is the base columns then the six."""
    path = tmp_path / "variants.tsv"
    path.write_text(HEADER.strip() + "\t" + "\t".join(ABLATIONS) + "\n"
                    + "\n".join(BESIDE_ABLATIONS + list(rows)) + "\n")
    return Experiment({**config(), "variants": str(path)}, read_variants(path), path)


NONE = "\t-" * len(ABLATIONS)
BESIDE_ABLATIONS = [r + NONE for r in ROWS if r.split("\t")[0] in ("orig", "full")]
RELAXED = "relaxed\trecursive\tg\taverage\t2\tcycle\t64\ttrue\tdefault\t-\t-\tdefault\tfalse"


def test_ablation_columns_resolve(tmp_path):
    e = ablation_experiment(
        tmp_path, RELAXED + "\tzero\t8\tfull\t-\tunit\trkl",
        _replace(REC, variant="start", sharing="middle") + "\t-\t-\t-\tstart\t-\t-", REC + NONE)
    relaxed, start, plain = e["relaxed"], e["start"], e["rec"]
    assert relaxed.convert_options == {"lora_init": "zero", "rank_attn": "8", "rank_mlp": "full", "norm_init": "unit"}
    assert (relaxed.ranks, relaxed.kd_loss) == (("8", "full"), "rkl")
    assert (start.convert_options, start.sharing, start.ranks) == ({"stepwise_rule": "start"}, "middle", ("0", "0"))
    assert (plain.convert_options, plain.kd_loss) == ({}, "-")
    # A table without the columns is today's table.
    assert experiment(tmp_path)["rec"].convert_options == {} and experiment(tmp_path)["rec"].kd_loss == "-"


@pytest.mark.parametrize("row, message", [
    (REC + "\t-\t-\t-\t-\t-\trkl", "variant 'rec': kd_loss 'rkl' needs kd true"),
    (_replace(REC, sharing="middle", early_exit="aggressive") + NONE,
     "variant 'rec': early_exit needs cycle or sequence sharing, not middle"),
    (REC + "\t-\t-\t-\t-\t-\tkl", "variant 'rec': kd_loss 'kl' is not one of -, fkl, rkl, jsd, tvd"),
    (REC + "\t-\t-\t-\t-\tfirst\t-", "variant 'rec': norm_init 'first' needs init average"),
    (RELAXED + "\t-\t-\t-\tstart\t-\t-", "variant 'relaxed': stepwise_rule 'start' needs init stepwise"),
    (RELAXED + "\t-\t-\t-\tmiddle\t-\t-", "variant 'relaxed': stepwise_rule 'middle' is not one of -, ends, start"),
    (RELAXED + "\tpca\t-\t-\t-\t-\t-", "variant 'relaxed': lora_init 'pca' is not one of -, svd, zero"),
    (RELAXED + "\t-\tmany\t-\t-\t-\t-", "variant 'relaxed': rank_attn 'many' does not match -|[0-9]+|full"),
    (ROWS[4] + "\t-\t-\t4\t-\t-\t-", "variant 'red': rank_mlp '4' needs a recursive variant"),
    (RELAXED + NONE + "\n" + _replace(RELAXED, variant="child", parent="relaxed", kd="false") + "\tzero" + NONE[2:],
     "variant 'child': lora_init 'zero' differs from its parent 'relaxed' ('-')"),
])
def test_each_bad_ablation_column_is_a_one_line_error(tmp_path, row, message):
    with pytest.raises(UsageError) as caught:
        ablation_experiment(tmp_path, row)
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'variants.tsv'}: ") and message in text and "\n" not in text, text


def test_table_level_errors(tmp_path):
    path = tmp_path / "variants.tsv"
    with pytest.raises(UsageError, match=f"variants table {path} does not exist"):
        read_variants(path)
    path.write_text(HEADER.replace("\tkd", "") + "x\n")
    with pytest.raises(UsageError, match=f"{path}: missing column 'kd'"):
        read_variants(path)
    with pytest.raises(UsageError, match=f"{path}: duplicate variant name 'rec'"):
        experiment(tmp_path, rows=ROWS + [REC])


def test_the_workflow_schema_says_what_the_package_checks():
    """workflow/schemas/variants.schema.yaml documents the table; the package enforces it."""
    schema = yaml.safe_load((ROOT / "workflow/schemas/variants.schema.yaml").read_text())
    row = schema["properties"]
    assert tuple(schema["required"]) == REQUIRED
    assert tuple(row["kind"]["enum"]) == KINDS
    for column, allowed in CHOICES.items():
        assert tuple(row[column]["enum"]) == allowed, column
    for column, (pattern, _) in PATTERNS.items():
        assert row[column]["pattern"] == f"^({pattern})$" or row[column]["pattern"] == f"^{pattern}$", column
    assert row["loops"]["minimum"] == 1


def test_the_shipped_tables_resolve(tmp_path):
    for name in ("config", "paper"):
        cfg = yaml.safe_load((ROOT / f"config/{name}.yaml").read_text())
        cfg.setdefault("early_exit", {"recipes": RECIPES})
        e = Experiment(cfg, read_variants(ROOT / cfg["variants"]), cfg["variants"])
        assert len(e) == len(read_variants(ROOT / cfg["variants"])) and any(v.trains for v in e)


# --- the package and the workflow -------------------------------------------------------
@pytest.mark.parametrize("module", ["rrt.variants", "rrt.train.budget", "rrt.report.aggregate", "rrt.cli"])
def test_the_package_does_not_import_snakemake(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'snakemake'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_rrt_plan_does_not_import_snakemake():
    test_the_package_does_not_import_snakemake("rrt.cli.plan")


def _workflow_paths(path: Path) -> list[int]:
    """Lines of a module with a string naming a path under workflow/ (docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    # "workflow" alone counts as a path part only in a `/` join (it is also a settings key).
    joined = {id(side) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
              for side in (n.left, n.right)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and not any(c.isspace() for c in n.value)  # prose (help texts) names paths freely
            and ("workflow/" in n.value or (n.value == "workflow" and id(n) in joined))]


def test_the_package_reads_nothing_under_workflow():
    """The workflow calls the package, never the other way round: no module names a path
    under workflow/."""
    hits = {str(p.relative_to(ROOT)) for p in (ROOT / "src/rrt").rglob("*.py") if _workflow_paths(p)}
    assert hits == set(), hits


def _snakemake(work: Path, target: str, *args: str) -> subprocess.CompletedProcess:
    # the target first: --configfile and --config take several values
    out = subprocess.run([SNAKEMAKE, target, "--cores", "1", "-s", str(ROOT / "Snakefile"), "-d", str(work),
                          "--configfile", str(work / "test.yaml"), *args],
                         cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out


@pytest.fixture
def work(tmp_path):
    """A working directory with the test config and other.tsv: its variants with
    rec-average's budget changed to 12345 tokens."""
    cfg = yaml.safe_load((ROOT / ".test/config/config.yaml").read_text())
    cfg["variants"] = str(ROOT / ".test/config/variants.tsv")
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(cfg))
    table = pd.read_csv(ROOT / ".test/config/variants.tsv", sep="\t", dtype=str, keep_default_na=False)
    table.loc[table.variant == "rec-average", "tokens"] = "12345"
    (tmp_path / "other.tsv").write_text(table.to_csv(sep="\t", index=False))
    return tmp_path


def test_config_overrides_reach_rrt_plan(work, monkeypatch, capsys):
    """The plan rule costs the config the rules see: Snakemake writes it (defaults filled
    in, --config overrides included) and `rrt plan --resolved-config` reads it."""
    overrides = ["--config", f"variants={work / 'other.tsv'}", "plan={gpu: a100}"]
    dry = _snakemake(work, "results/tables/plan.csv", "-n", "-p", *overrides)
    assert "rrt plan --resolved-config results/config.json --out results/tables/plan.csv" in dry.stdout, dry.stdout
    _snakemake(work, "results/config.json", *overrides)  # the one cheap job the plan needs
    resolved = json.loads((work / "results/config.json").read_text())
    assert resolved["variants"] == str(work / "other.tsv") and resolved["plan"]["gpu"] == "a100"
    assert resolved["train"]["tokens"] == 512 and resolved["plan"]["mfu"] == 0.4  # the file's, the schema's default
    monkeypatch.chdir(work)
    assert main(["plan", "--resolved-config", "results/config.json", "--out", "plan.csv"]) == 0
    assert "results/config.json: 13 variants on a100" in capsys.readouterr().out  # the test table's 13 rows
    plan = pd.read_csv(work / "plan.csv").set_index("variant")
    assert plan.loc["rec-average", "tokens"] == 12345 and plan.loc["rec-stepwise", "tokens"] == 512


@pytest.mark.slow
def test_config_overrides_rerun_the_plan_rule(work):
    """End to end: the plan rule run twice, the second time with overrides, which rerun it."""
    _snakemake(work, "results/tables/plan.csv")
    plan = pd.read_csv(work / "results/tables/plan.csv").set_index("variant")
    assert plan.loc["rec-average", "tokens"] == 512 and "on h100" in (work / "results/logs/plan.log").read_text()
    _snakemake(work, "results/tables/plan.csv", "--config", f"variants={work / 'other.tsv'}", "plan={gpu: a100}")
    plan = pd.read_csv(work / "results/tables/plan.csv").set_index("variant")
    assert plan.loc["rec-average", "tokens"] == 12345 and plan.loc["rec-stepwise", "tokens"] == 512
    assert "on a100" in (work / "results/logs/plan.log").read_text()


def test_resolved_config_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    assert cli_error(capsys, ["plan", "--resolved-config", str(path)]) == \
        f"rrt plan: error: --resolved-config {path} does not exist"
    path.write_text("{not json")
    assert f"--resolved-config {path} is not JSON: " in cli_error(capsys, ["plan", "--resolved-config", str(path)])
    path.write_text("[1, 2]")
    assert cli_error(capsys, ["plan", "--resolved-config", str(path)]).endswith(
        f"--resolved-config {path} is not a workflow config (a mapping with a variants key)")
    cfg = {**config(), "variants": str(tmp_path / "v.tsv")}
    (tmp_path / "v.tsv").write_text(HEADER + _replace(REC, base="nope") + "\n")
    path.write_text(json.dumps(cfg))
    assert cli_error(capsys, ["plan", "--resolved-config", str(path)]).endswith(
        f"{tmp_path / 'v.tsv'}: variant 'rec' uses base 'nope', not in base_models (g, h)")


# --- parent_data: post-training on the parent's blocks or on new ones ----------------------
def _with_parent_data(values: dict) -> list[str]:
    """ROWS with a parent_data column: `values` by variant name, `-` elsewhere."""
    return [f"{r}\t{values.get(r.split(chr(9))[0], '-')}" for r in ROWS]


def experiment_with_parent_data(tmp_path, values: dict, cfg=None) -> Experiment:
    path = tmp_path / "variants.tsv"
    path.write_text(HEADER.rstrip("\n") + "\tparent_data\n" + "\n".join(_with_parent_data(values)) + "\n")
    return Experiment({**(cfg or config()), "variants": str(path)}, read_variants(path), path)


def test_a_child_reads_new_data_unless_it_asks_for_overlap(tmp_path):
    """rec (1000 tokens) -> ee (300, new by default) -> ee2 (200): ee leaves out rec's
    blocks; ee2 leaves out rec's and ee's, or with overlap reads ee's blocks again (it
    leaves out what ee left out)."""
    e = experiment(tmp_path)  # no parent_data column: new for rows with a parent
    assert (e["rec"].parent_data, e["ee"].parent_data, e["ee2"].parent_data) == (None, "new", "new")
    assert (e.data_after("rec"), e.data_after("ee"), e.data_after("ee2")) == ([], [1000], [1000, 300])
    assert (e.data_tokens("ee"), e.data_tokens("ee2")) == (1300, 1500)
    e = experiment_with_parent_data(tmp_path, {"ee": "new", "ee2": "overlap"})
    assert (e["ee"].parent_data, e["ee2"].parent_data) == ("new", "overlap")
    assert (e.data_after("ee"), e.data_after("ee2")) == ([1000], [1000])
    e = experiment_with_parent_data(tmp_path, {"ee": "overlap"})
    assert e.data_after("ee") == [] and e.data_after("ee2") == [300]  # ee read rec's blocks; ee2 leaves out ee's
    # a parent evaluated as converted (0 tokens) drew nothing
    zero = experiment(tmp_path, rows=[_replace(REC, tokens="0"), _replace(ROWS[5], variant="ee0")])
    assert zero["ee0"].parent_data == "new" and zero.data_after("ee0") == []
    # the train set holds the most any run needs, its parents' draws included
    big = ["rec\trecursive\tg\tstepwise\t2\tcycle\t0\tfalse\t4000\t-\t-\tdefault\ttrue"] + ROWS[3:]
    path = tmp_path / "big.tsv"
    path.write_text(HEADER + "\n".join([ROWS[0], *big]) + "\n")
    e = Experiment({**config(), "variants": str(path)}, read_variants(path), path)
    assert e.largest_budget("g") == 4096 and e.train_tokens_to_gather("g") == 4000 + 300 + 200


@pytest.mark.parametrize("values, cap, message", [
    ({"rec": "new"}, None, "variant 'rec': parent_data 'new' needs a parent (- without one)"),
    ({"orig": "overlap"}, None, "variant 'orig': parent_data 'overlap' needs a parent (- without one)"),
    ({"ee": "fresh"}, None, "variant 'ee': parent_data 'fresh' is not one of -, new, overlap"),
    ({}, 1200, "variant 'ee': new data needs 1300 tokens (1000 drawn before, 300 its own), above "
               "data.max_train_tokens 1200 (or set parent_data: overlap)"),
])
def test_parent_data_errors_are_one_line(tmp_path, values, cap, message):
    with pytest.raises(UsageError) as caught:
        experiment_with_parent_data(tmp_path, values, cfg=config(max_train_tokens=cap))
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'variants.tsv'}: ") and message in text and "\n" not in text, text
    # overlap needs only the parent's own blocks: the same cap then plans
    if cap is not None:
        assert experiment_with_parent_data(tmp_path, {"ee": "overlap", "ee2": "overlap"},
                                           cfg=config(max_train_tokens=cap)).data_after("ee") == []


def test_the_embedded_default_post_trains_on_new_data():
    """make run's rec-stepwise-ee leaves out rec-stepwise's blocks, and the train set the
    config gathers (data.max_train_tokens) holds both runs' tokens."""
    from rrt.settings import resolve_config
    cfg = resolve_config(yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    e = Experiment(cfg, read_variants(ROOT / cfg["variants"]), cfg["variants"])
    tokens = cfg["train"]["tokens"]
    assert e["rec-stepwise-ee"].parent_data == "new" and e.data_after("rec-stepwise-ee") == [tokens]
    assert e.train_tokens_to_gather("smollm2") == 2 * tokens <= cfg["data"]["max_train_tokens"]


# --- Dynamic Layer Tying rows (kind dlt) ---------------------------------------------------
DLT_HEADER = HEADER.strip() + "\tdlt_max_unique\tdlt_interval\n"
DLT = "dlt\tdlt\tg\t-\t1\t-\t0\tfalse\tdefault\t-\t-\tdefault\tfalse\t4\t2"


def dlt_experiment(tmp_path, *rows: str) -> Experiment:
    path = tmp_path / "variants.tsv"
    beside = [r + "\t-\t-" for r in ROWS if r.split("\t")[0] in ("orig", "full", "rec")]
    path.write_text(DLT_HEADER + "\n".join(beside + list(rows)) + "\n")
    return Experiment({**config(), "variants": str(path)}, read_variants(path), path)


def test_dlt_rows_resolve_to_their_train_settings_and_start(tmp_path):
    """A DLT row trains the base's own layers (from its weights, or from a random init built
    like the untied `reduced` loops-1 baseline); its columns are its `dlt` settings."""
    e = dlt_experiment(tmp_path, DLT, "scratch\tdlt\tg\tscratch\t1\t-\t0\tfalse\t2000\t-\t-\tdefault\tfalse\t-\t-",
                       "untied\treduced\tg\tscratch\t1\t-\t0\tfalse\t2000\t-\t-\tdefault\tfalse\t-\t-")
    dlt, scratch = e["dlt"], e["scratch"]
    assert (dlt.dlt_settings, scratch.dlt_settings, e["rec"].dlt_settings) == (
        {"enabled": True, "max_unique": 4, "interval": 2}, {"enabled": True}, None)
    assert (dlt.init_dir, dlt.final_dir, dlt.trains, dlt.converted) == ("results/models/base/g", "results/train/dlt/final",
                                                                       True, False)
    assert (scratch.init_dir, scratch.converted, scratch.from_scratch) == ("results/models/init/scratch", True, True)
    assert e["untied"].init_dir == "results/models/init/untied" and not e["untied"].from_scratch
    # a table without the DLT columns is today's table
    assert experiment(tmp_path)["rec"].dlt_settings is None and experiment(tmp_path)["rec"].dlt_max_unique == "-"


@pytest.mark.parametrize("row, message", [
    (_replace(DLT.rsplit("\t", 2)[0], loops="2") + "\t4\t2", "variant 'dlt': a dlt variant needs loops 1, got 2"),
    (_replace(DLT.rsplit("\t", 2)[0], rank="8") + "\t4\t2", "variant 'dlt': a dlt variant needs rank 0, got '8'"),
    (_replace(DLT.rsplit("\t", 2)[0], kd="true") + "\t4\t2", "variant 'dlt': a dlt variant needs kd false, got True"),
    (_replace(DLT.rsplit("\t", 2)[0], init="average") + "\t4\t2",
     "variant 'dlt': init 'average' of a dlt variant is not one of -, scratch"),
    (_replace(DLT.rsplit("\t", 2)[0], tokens="0") + "\t4\t2", "variant 'dlt': a dlt variant needs tokens > 0"),
    (_replace(DLT.rsplit("\t", 2)[0], throughput="true") + "\t4\t2",
     "variant 'dlt': throughput needs a recursive or full-size model"),
    (DLT.rsplit("\t", 2)[0] + "\t0\t2", "variant 'dlt': dlt_max_unique '0' does not match"),
    (DLT.rsplit("\t", 2)[0] + "\t4\tsoon", "variant 'dlt': dlt_interval 'soon' does not match"),
    (REC + "\t15\t-", "variant 'rec2': dlt_max_unique '15' needs kind dlt"),
])
def test_each_bad_dlt_row_is_a_one_line_error(tmp_path, row, message):
    row = row.replace("rec\t", "rec2\t", 1) if row.startswith("rec\t") else row
    with pytest.raises(UsageError) as caught:
        dlt_experiment(tmp_path, row)
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'variants.tsv'}: ") and message in text and "\n" not in text, text


@pytest.mark.parametrize("budget, message", [
    ("exactly", None),
    ("most", "variant 'dlt': dlt_budget 'most' is not one of -, at_most, exactly"),
])
def test_the_dlt_budget_column_is_the_settings_budget(tmp_path, budget, message):
    """`dlt_budget` becomes `dlt.budget` (a string, not a number); a bad value is one line."""
    path = tmp_path / "variants.tsv"
    beside = [r + "\t-\t-\t-" for r in ROWS if r.split("\t")[0] in ("orig", "full", "rec")]
    path.write_text(DLT_HEADER.strip() + "\tdlt_budget\n" + "\n".join([*beside, f"{DLT}\t{budget}"]) + "\n")
    if message is None:
        e = Experiment({**config(), "variants": str(path)}, read_variants(path), path)
        assert e["dlt"].dlt_settings == {"enabled": True, "max_unique": 4, "interval": 2, "budget": "exactly"}
        return
    with pytest.raises(UsageError) as caught:
        Experiment({**config(), "variants": str(path)}, read_variants(path), path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_dlt_budget_needs_a_k(tmp_path):
    path = tmp_path / "variants.tsv"
    row = DLT.rsplit("\t", 2)[0] + "\t-\t2\texactly"
    path.write_text(DLT_HEADER.strip() + "\tdlt_budget\n" + row + "\n")
    with pytest.raises(UsageError, match="variant 'dlt': dlt_budget 'exactly' needs kind dlt and a dlt_max_unique"):
        Experiment({**config(), "variants": str(path)}, read_variants(path), path)
