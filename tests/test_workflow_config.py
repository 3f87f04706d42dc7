"""Workflow configuration: schema validation and the DAG, without running any job."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import train_settings_in

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def dry_run(tmp_path, config: dict, variants: str | None = None, *extra: str):
    if variants is not None:
        (tmp_path / "variants.tsv").write_text(variants)
        config["variants"] = str(tmp_path / "variants.tsv")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([SNAKEMAKE, "all", "-n", "--cores", "1", "-s", str(ROOT / "Snakefile"),
                          "-d", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), *extra],
                         cwd=ROOT, capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture
def test_config(tmp_path):
    config = yaml.safe_load((ROOT / ".test/config/config.yaml").read_text())
    config["variants"] = str(ROOT / ".test/config/variants.tsv")
    config["paper_reference"] = str(ROOT / "config/paper_reference.tsv")
    config["paper_throughput"] = str(ROOT / "config/paper_throughput.tsv")
    return config


def test_test_config_builds_the_whole_dag(tmp_path, test_config):
    code, text = dry_run(tmp_path, test_config)
    assert code == 0, text[-2000:]
    # simulate: the paper's throughput procedure, one job per variant with throughput true
    for rule, count in (("convert", 8), ("reduce", 1), ("uptrain", 12), ("evaluate", 13), ("throughput", 2),
                        ("simulate", 2), ("aggregate", 1)):
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-3000:])


def test_ablation_columns_reach_convert_and_train(tmp_path, test_config):
    """The test table's ablation rows: their columns become `rrt convert` flags and the KD
    loss of `rrt train --settings`; the rows without them run today's commands."""
    code, text = dry_run(tmp_path, test_config, None, "-p")
    assert code == 0, text[-2000:]
    converts = {line.split("--out ")[1].split()[0].rsplit("/", 1)[-1]: line for line in text.splitlines()
                if "rrt convert" in line}
    assert converts["relaxed-average-r4-zero"].endswith("--rank 4 --lora-init zero > "
                                                        "results/logs/convert/relaxed-average-r4-zero.log 2>&1")
    assert "--init stepwise --loops 2 --sharing cycle --rank 0 --stepwise-rule start >" in converts["rec-stepwise-start"]
    assert "--sharing middle --rank 0 >" in converts["rec-middle"]
    assert "--rank 4 >" in converts["relaxed-average-r4"]  # no ablation column set: as before
    trains = {line.split("--out ")[1].split()[0].rsplit("/", 1)[-1]: train_settings_in(line)
              for line in text.splitlines() if "rrt train" in line}
    assert trains["rec-stepwise-kd-rkl"]["kd"]["loss"] == "rkl" and trains["rec-stepwise-kd"]["kd"]["loss"] == "fkl"
    # A DLT row's columns become the `dlt` section of its settings; the other rows have none.
    assert {k: trains["dlt-k2"]["dlt"][k] for k in ("enabled", "max_unique", "interval", "budget")} == {
        "enabled": True, "max_unique": 2, "interval": 2, "budget": "exactly"}
    assert [name for name, s in trains.items() if (s.get("dlt") or {}).get("enabled")] == ["dlt-k2"]


def test_bad_value_is_one_line_naming_the_key(tmp_path, test_config):
    test_config["train"]["lr"] = -1
    code, text = dry_run(tmp_path, test_config)
    assert code != 0
    assert "config: train.lr must be a finite number > 0, got -1.0" in text, text[-2000:]


def test_unknown_key_is_rejected(tmp_path, test_config):
    test_config["eval"]["limt"] = 3
    code, text = dry_run(tmp_path, test_config)
    assert code != 0 and "config: eval.limt: unknown key (known: source, tasks, limit," in text, text[-2000:]


def test_command_line_overrides_reach_every_job_typed(tmp_path, test_config):
    """config/README.md's form, `--config 'section={key: value}'` (after the target: --config
    takes several values): Snakemake hands the nested values over as strings; each is parsed
    by its key's type, nested sections too, the rest of the section kept."""
    code, text = dry_run(tmp_path, test_config, None, "-p", "--config", "train={tokens: 8192, kd: {weight: 0.7}}",
                         "eval={limit: 20}", "data={max_train_tokens: 16384}")  # room for a post-training on new data
    assert code == 0, text[-2000:]
    train = [train_settings_in(line) for line in text.splitlines() if "rrt train" in line]
    # The tiny variants' own `tokens` column overrides train.tokens where it is set.
    assert train and {s["kd"]["weight"] for s in train} == {0.7} and 8192 in {s["tokens"] for s in train}
    assert {s["lr"] for s in train} == {test_config["train"]["lr"]}  # the section's other keys stay
    evals = [train_settings_in(line) for line in text.splitlines() if "rrt eval" in line]
    assert evals and all(s["limit"] == 20 for s in evals)
    assert {s["batch_size"] for s in evals} == {test_config["eval"].get("batch_size", 8)}  # the others stay


@pytest.mark.parametrize("override, message", [
    ("train={tokens: abc}", "config: train.tokens must be an integer >= 1, got 'abc'"),
    ("train={kd: {weight: 2}}", "config: train.kd.weight must be in [0, 1], got 2.0"),
    ("eval={limt: 3}", "config: eval.limt: unknown key"),
])
def test_bad_command_line_override_is_one_line_naming_the_key(tmp_path, test_config, override, message):
    code, text = dry_run(tmp_path, test_config, None, "--config", override)
    assert code != 0 and message in text, text[-2000:]


def test_variant_with_unknown_base_is_rejected(tmp_path, test_config):
    variants = ("variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\n"
                "x\trecursive\tnope\taverage\t2\tcycle\t0\tfalse\tdefault\n")
    code, text = dry_run(tmp_path, test_config, variants)
    assert code != 0 and "variant 'x' uses base 'nope', not in base_models" in text, text[-2000:]


def test_bad_rank_in_variants_is_rejected(tmp_path, test_config):
    variants = ("variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\n"
                "x\trecursive\ttiny\taverage\t2\tcycle\tlots\tfalse\tdefault\n")
    code, text = dry_run(tmp_path, test_config, variants)
    assert code != 0 and "'lots' does not match" in text, text[-2000:]


EE_HEADER = "variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\tparent\tearly_exit\n"
EE_PARENT = "p\trecursive\ttiny\tstepwise\t2\tcycle\t0\tfalse\tdefault\t-\t-\n"


@pytest.mark.parametrize("row, message", [
    ("x\trecursive\ttiny\tstepwise\t2\tcycle\t0\tfalse\tdefault\tnope\taggressive_kd",
     "variant 'x': parent 'nope' is not a variant"),
    ("x\trecursive\ttiny\taverage\t2\tcycle\t0\tfalse\tdefault\tp\taggressive_kd",
     "variant 'x': init 'average' differs from its parent 'p' ('stepwise')"),
    ("x\trecursive\ttiny\tstepwise\t2\tcycle\t0\tfalse\tdefault\tp\tfast",
     "variant 'x': early_exit recipe 'fast' is not in early_exit.recipes (aggressive_kd, aggressive)"),
    ("x\trecursive\ttiny\tstepwise\t2\tcycle\t0\ttrue\tdefault\tp\taggressive_kd",
     "variant 'x': early_exit and kd cannot be combined"),
    ("x\trecursive\ttiny\tstepwise\t1\tcycle\t0\tfalse\tdefault\t-\taggressive",
     "variant 'x': early_exit needs a recursive variant with loops >= 2"),
    ("x\trecursive\ttiny\tstepwise\t2\tcycle\t0\tfalse\tdefault\tx\t-",
     "variant 'x': its parents loop back to 'x'"),
])
def test_bad_early_exit_rows_are_one_line_errors(tmp_path, test_config, row, message):
    code, text = dry_run(tmp_path, test_config, EE_HEADER + EE_PARENT + row + "\n")
    assert code != 0 and message in text, text[-2000:]


@pytest.mark.parametrize("parent_data, data_after", [("-", [512]), ("new", [512]), ("overlap", None)])
def test_post_training_gets_its_parents_budgets_unless_overlap(tmp_path, test_config, parent_data, data_after):
    """The uptrain job of a row with a parent leaves out the parent's blocks (`data_after`:
    the parent's budget, train.tokens 512 here) unless parent_data is overlap; the parent's
    own job has none. A parent_data on a row without a parent is a one-line error."""
    from .conftest import train_settings_in

    header = EE_HEADER.replace("\n", "\tparent_data\n")
    variants = header + EE_PARENT.replace("\n", "\t-\n") + \
        f"x\trecursive\ttiny\tstepwise\t2\tcycle\t0\tfalse\tdefault\tp\taggressive_kd\t{parent_data}\n"
    code, text = dry_run(tmp_path, test_config, variants, "-p")
    assert code == 0, text[-2000:]
    train = {line.split("--out results/train/")[1].split()[0]: train_settings_in(line)
             for line in text.splitlines() if "rrt train " in line}
    assert "data_after" not in train["p"] and train["x"].get("data_after") == data_after
    bad = header + EE_PARENT.replace("\n", "\tnew\n")
    code, text = dry_run(tmp_path, test_config, bad)
    assert code != 0 and "variant 'p': parent_data 'new' needs a parent (- without one)" in text, text[-2000:]


def plan_shipped_config(tmp_path, configfile: str, cores: int) -> str:
    """`snakemake all -n -p` of a config shipped in config/, in a scratch directory with a copy
    of config/; its output (the dry run must succeed)."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    out = subprocess.run([SNAKEMAKE, "all", "-n", "-p", "--cores", str(cores), "-s", str(ROOT / "Snakefile"),
                          "-d", str(tmp_path), "--configfile", str(ROOT / configfile)],
                         cwd=ROOT, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    return text


def test_paper_config_builds_its_dag_with_multi_gpu_commands(tmp_path):
    """config/paper.yaml (hub models, 8-GPU uptraining) plans without touching the network:
    uptraining is launched on 8 ranks (`rrt launch`) with DeepSpeed and a time limit, and
    evaluation uses lm-eval's stock tasks."""
    text = plan_shipped_config(tmp_path, "config/paper.yaml", cores=8)
    for rule, count in (("base_model", 3), ("tokenize", 3), ("uptrain", 96), ("evaluate", 99)):
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-3000:])
    train = [line for line in text.splitlines() if "rrt train" in line]
    settings = {line: train_settings_in(line) for line in train}
    # A Dynamic Layer Tying run is one process on one GPU without DeepSpeed (its reties change
    # the parameters); every other run on 8 ranks with ZeRO-2.
    dlt = {line for line in train if (settings[line].get("dlt") or {}).get("enabled")}
    # one process: `rrt train` itself, without `rrt launch` (it would only exec it)
    assert len(dlt) == 6 and all("rrt launch" not in line and line.split("rrt train")[0].rstrip().split()[-1].startswith("OMP_NUM_THREADS=")
                                 and settings[line]["deepspeed"] is None for line in dlt)
    assert train and all("rrt launch --nodes 1 --procs-per-node 8 --gpus-per-node 8" in line and " --requeue " in line
                         for line in train if line not in dlt)
    assert all(s["deepspeed"] == "workflow/deepspeed/zero2.json" for line, s in settings.items() if line not in dlt)
    assert all(s["stop_margin_s"] == 900 and s["gradient_checkpointing"] is True and s["loss_chunk_tokens"] == 4096
               and s["adam_betas"] == [0.9, 0.95] and s["batch_tokens"] == 2097152 for s in settings.values())
    # Warmup follows each run's length: the paper's 200 steps at 15B and 800 at 60B.
    from rrt.train.plan import num_steps, plan_batches

    step_tokens = plan_batches(2097152, 2048, 8, world_size=8)[2]
    for tokens, paper_warmup in ((15_000_000_000, 200), (60_000_000_000, 800)):
        assert round(0.02796 * num_steps(tokens, step_tokens)) == paper_warmup
    assert all(s["warmup_steps"] is None and s["warmup_ratio"] == 0.02796 for s in settings.values())
    assert all(train_settings_in(line)["source"] == "harness" for line in text.splitlines() if "rrt eval" in line)
    corpus = [train_settings_in(line) for line in text.splitlines() if "rrt corpus" in line]
    assert [c["source"] for c in corpus] == ["hub"] and corpus[0]["slimpajama"]
    # Early exit: post-training starts from the parent's uptrained model, with its recipe;
    # the CE-only weight ablations switch the KD off; co-training starts from the conversion.
    post = next(line for line in train if "--out results/train/gemma-rec-stepwise-ee " in line)
    assert "--model results/train/gemma-rec-stepwise/final" in post and settings[post]["tokens"] == 15000000000
    assert settings[post]["early_exit"] == {"weights": "aggressive", "kd_weight": 1.0}
    ablation = next(line for line in train if "--out results/train/gemma-rec-stepwise-ee-w0.3 " in line)
    assert settings[ablation]["early_exit"] == {"weights": 0.3, "kd_weight": 0.0}
    weighted = next(line for line in train if "--out results/train/gemma-rec-stepwise-ee-weighted " in line)
    assert settings[weighted]["early_exit"] == {"weights": "linear", "kd_weight": 0.0}
    cotrain = next(line for line in train if "--out results/train/gemma-rec-stepwise-ee-cotrain " in line)
    assert "--model results/models/init/gemma-rec-stepwise-ee-cotrain" in cotrain
    # Dynamic Layer Tying: K = L/2 from the pretrained model (its budget in the dlt section);
    # from scratch, the DLT run and its untied baseline start from the same random init.
    k9 = next(line for line in train if "--out results/train/gemma-dlt-k9 " in line)
    assert "--model results/models/base/gemma2b " in k9
    assert settings[k9]["dlt"]["enabled"] and settings[k9]["dlt"]["max_unique"] == 9
    assert settings[k9]["dlt"]["budget"] == "exactly"  # the size of gemma-rec-stepwise at every step
    scratch = next(line for line in train if "--out results/train/gemma-scratch-dlt " in line)
    assert "--model results/models/init/gemma-scratch-dlt " in scratch and settings[scratch]["dlt"]["enabled"]
    assert settings[scratch]["dlt"].get("max_unique") is None  # no budget (its `budget` key then binds nothing)
    for name in ("gemma-scratch-dlt", "gemma-scratch-untied"):
        assert (f"rrt reduce --base results/models/base/gemma2b --out results/models/init/{name} --loops 1 "
                "--init scratch") in text
    evals = {line.split("--out results/eval/")[1].split(".json")[0]: line for line in text.splitlines()
             if "rrt eval" in line}
    at_exits = sorted(v for v, line in evals.items() if " --exits " in line)
    assert at_exits == sorted(["gemma-rec-stepwise", "gemma-rec-stepwise-ee", "gemma-rec-stepwise-ee-ce",
                               "gemma-rec-stepwise-ee-w0.3", "gemma-rec-stepwise-ee-w0.05",
                               "gemma-rec-stepwise-ee-w0.01", "gemma-rec-stepwise-ee-weighted",
                               "gemma-rec-stepwise-ee-cotrain", "gemma-rec-stepwise-ee-overlap"])
    parent, child = train_settings_in(evals["gemma-rec-stepwise"]), train_settings_in(evals["gemma-rec-stepwise-ee"])
    assert parent["exit_task_thresholds"] == {"max_prob": [], "entropy": []}  # a parent: held-out thresholds only
    assert child["exit_task_thresholds"]["max_prob"] == [0.3, 0.6, 0.9]
    assert parent["exit_thresholds"] == child["exit_thresholds"] and child["exit_thresholds"]["max_prob"]
    assert "exit_thresholds" not in train_settings_in(evals["gemma-rec-average"])  # no exits: none passed


def test_test_config_is_self_contained(tmp_path, test_config):
    """With --configfile, the Snakefile does not load config/config.yaml underneath: a
    poisoned default where -d points changes nothing in the planned commands."""
    (tmp_path / "config").mkdir()
    poisoned = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    poisoned["train"]["tokens"] = 999999
    poisoned["eval"]["limit"] = 77
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(poisoned))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(test_config))
    out = subprocess.run([SNAKEMAKE, "all", "-n", "-p", "--cores", "1", "-s", str(ROOT / "Snakefile"),
                          "-d", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                         cwd=ROOT, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    train = [train_settings_in(line) for line in text.splitlines() if "rrt train" in line]
    assert train and {s["tokens"] for s in train} == {512} and "999999" not in text
    evals = [train_settings_in(line) for line in text.splitlines() if "rrt eval" in line]
    assert evals and {s["limit"] for s in evals} == {2}


def test_every_config_validates_on_its_own():
    """config.yaml, paper.yaml, healing.yaml and the test config each validate against the schema alone."""
    from snakemake.utils import validate

    for path in ("config/config.yaml", "config/paper.yaml", "config/healing.yaml", ".test/config/config.yaml"):
        config = yaml.safe_load((ROOT / path).read_text())
        validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))


def test_healing_config_plans_its_four_rows(tmp_path):
    """config/healing.yaml (docs/healing.md) plans the original, the full-size uptrained model
    and the two recursive rows with pure KD from the full-size model, at its longer budgets."""
    text = plan_shipped_config(tmp_path, "config/healing.yaml", cores=2)
    for rule, count in (("base_model", 1), ("convert", 2), ("uptrain", 3), ("evaluate", 4), ("aggregate", 1)):
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-3000:])
    assert not any(line.split()[:1] in (["throughput"], ["simulate"], ["reduce"]) for line in text.splitlines())
    converts = {line.split("--out ")[1].split()[0].rsplit("/", 1)[-1]: line for line in text.splitlines()
                if "rrt convert" in line}
    assert "--init stepwise --loops 2 --sharing cycle --rank 0 >" in converts["heal-rec-stepwise-kd"]
    assert "--init average --loops 2 --sharing cycle --rank 64 >" in converts["heal-relaxed-average-r64-kd"]
    trains = {line.split("--out ")[1].split()[0].rsplit("/", 1)[-1]: line for line in text.splitlines()
              if "rrt train" in line}
    settings = {name: train_settings_in(line) for name, line in trains.items()}
    assert {name: s["tokens"] for name, s in settings.items()} == {
        "heal-full-uptrained": 131072, "heal-rec-stepwise-kd": 262144, "heal-relaxed-average-r64-kd": 262144}
    assert all(s["batch_tokens"] == 256 and s["lr"] == 1e-3 and s["warmup_ratio"] == 0.05
               and s["precision"] == "bf16" and s["kd"]["weight"] == 1.0 for s in settings.values())
    assert all("--teacher results/models/base/smollm2" in trains[name]
               for name in ("heal-rec-stepwise-kd", "heal-relaxed-average-r64-kd"))
    assert "--teacher" not in trains["heal-full-uptrained"]
