"""The whole Snakemake workflow on the small test config (.test/config): a tiny random
llama with the real SmolLM2 tokenizer, the real embedded corpus and the 7 real tasks.
Runs every rule once (about 1.5 minutes on 2 cores), then checks what a user reads."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

# The whole pipeline runs (~2 CPU-min): CI's slow stage (`make test-slow`). Fast tests of
# the same behaviour stay in `make test`: the DAG and its commands (test_workflow_config.py,
# test_slurm_profile.py), a real plan job from a plain shell (test_docs.py), the resolved
# config reaching `rrt plan` (test_variants.py), and each stage's command on its own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# the rules call `rrt`: this interpreter's scripts first, and no network
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TASKS = ["lambada", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # targets before --configfile, which takes several values
    return subprocess.run([SNAKEMAKE, *args, "--cores", "2", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                           "--configfile", str(workdir / "test.yaml")],
                          cwd=ROOT, capture_output=True, text=True, env=ENV)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((ROOT / ".test/config/config.yaml").read_text())
    config["variants"] = str(ROOT / ".test/config/variants.tsv")
    config["paper_reference"] = str(ROOT / "config/paper_reference.tsv")
    config["paper_throughput"] = str(ROOT / "config/paper_throughput.tsv")
    (work / "test.yaml").write_text(yaml.safe_dump(config))
    (work / "config").mkdir()  # the Snakefile's own configfile, relative to -d
    (work / "config/config.yaml").write_text((ROOT / "config/config.yaml").read_text())
    out = snakemake(work, "all")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return work, config


def test_summary_has_every_variant_with_sizes_and_scores(run):
    work, config = run
    variants = pd.read_csv(config["variants"], sep="\t")
    summary = pd.read_csv(work / "results/tables/summary.csv").set_index("variant")
    assert list(summary.index) == list(variants.variant)
    full = summary.loc["full-original", "non_embedding_params"]
    # 4 layers looped twice: 2 unique layers + the final norm
    hidden = config["base_models"]["tiny"]["tiny"]["hidden_size"]
    assert summary.loc["rec-average", "non_embedding_params"] == (full - hidden) // 2 + hidden
    assert summary.loc["relaxed-average-r4", "non_embedding_params"] > summary.loc["rec-average", "non_embedding_params"]
    trained = variants.variant[variants.kind != "original"]
    assert (summary.loc[trained, "tokens"] == config["train"]["tokens"]).all()
    assert summary.loc["full-original", "tokens"] == 0
    for task in TASKS:
        assert summary[f"acc_{task}"].between(0, 100).all()
    for name in ("wiki", "science", "fiction"):
        assert summary[f"ppl_{name}"].map(math.isfinite).all()
    stages = pd.read_csv(work / "results/tables/stage_times.csv").set_index("rule")
    assert stages.loc["uptrain", "jobs"] == len(trained) and stages.loc["evaluate", "jobs"] == len(variants)
    assert {"base_model", "corpus", "tokenize", "convert", "reduce"} <= set(stages.index)
    assert sorted(p.name for p in (work / "results/figures").iterdir()) == [
        "accuracy_vs_params.png", "dlt_params.png", "dlt_tying.png", "exit_rates.png", "exit_tradeoff.png",
        "init_comparison.png", "loss_curves.png", "relaxed_rank.png", "throughput_accuracy.png",
        "train_throughput.png"]


def test_eval_json_matches_an_independent_perplexity(run):
    from transformers import AutoModelForCausalLM

    from rrt.eval.perplexity import perplexity

    work, _ = run
    result = json.loads((work / "results/eval/full-original.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(work / "results/models/base/tiny").eval()
    again = perplexity(model, work / "results/data/tokens/tiny/heldout_wiki")
    assert result["ppl_wiki"] == pytest.approx(again["ppl"], rel=1e-5)
    assert set(result["tasks"]) == set(TASKS) and all(t["n"] == 2 for t in result["tasks"].values())


def test_uptraining_logged_every_step_and_kd(run):
    work, config = run
    t = config["train"]
    steps = t["tokens"] // t["batch_tokens"]
    loss = pd.read_csv(work / "results/train/rec-stepwise/loss.csv")
    assert list(loss.step) == list(range(1, steps + 1))
    assert list(loss.tokens_seen) == [t["batch_tokens"] * s for s in loss.step]
    kd = pd.read_csv(work / "results/train/rec-stepwise-kd/loss.csv")
    assert "kd" in kd.columns and (kd.kd > 0).all()
    assert not (work / "results/train/rec-stepwise/checkpoints").exists()  # removed once final exists
    # Watching it: one line per logged step in the rule's log, the same steps in TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = (work / "results/logs/uptrain/rec-stepwise.log").read_text().replace("\r", "\n")
    lines = [line for line in log.splitlines() if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(loss.step), lines
    assert all(" tokens/s | " in line and " | ETA " in line for line in lines)
    events = EventAccumulator(str(work / "results/train/rec-stepwise/tensorboard"))
    events.Reload()
    for tag in ("train/loss", "train/tokens_per_s", "train/model_flops_per_s", "train/eta_s"):
        assert [e.step for e in events.Scalars(tag)] == list(loss.step), tag


def test_ablation_rows_run_end_to_end(run):
    """The test table's ablation rows: zero-init LoRA, fixed-start stepwise, middle sharing
    and a reverse-KL distillation, each converted, uptrained and evaluated as asked."""
    work, config = run
    summary = pd.read_csv(work / "results/tables/summary.csv").set_index("variant")
    converted = {name: json.loads((work / f"results/models/init/{name}/config.json").read_text())
                 for name in ("relaxed-average-r4-zero", "rec-stepwise-start", "rec-middle")}
    assert converted["relaxed-average-r4-zero"]["lora_init"] == "zero"
    assert converted["rec-stepwise-start"]["init_sources"] == [[0], [2]]  # fixed-ends would take [0, 3]
    assert converted["rec-middle"]["layer_map"] == [0, 1, 1, 2]
    # 3 unique layers of 4 (the first, one shared, the last) + the final norm
    full, hidden = summary.loc["full-original", "non_embedding_params"], config["base_models"]["tiny"]["tiny"]["hidden_size"]
    assert summary.loc["rec-middle", "non_embedding_params"] == (full - hidden) * 3 // 4 + hidden
    rkl = json.loads((work / "results/train/rec-stepwise-kd-rkl/train_summary.json").read_text())
    fkl = json.loads((work / "results/train/rec-stepwise-kd/train_summary.json").read_text())
    assert (rkl["config"]["kd_kind"], fkl["config"]["kd_kind"]) == ("rkl", "fkl")
    for name in converted:
        assert math.isfinite(summary.loc[name, "acc_avg"])


def test_early_exit_post_training_and_every_exit_evaluated(run):
    """rec-stepwise-ee trains on from rec-stepwise's uptrained model with the aggressive
    recipe (every exit's CE, KD from the final one); it and its parent are evaluated at both
    exits, at every threshold, and the early-exit table holds one row per exit."""
    work, config = run
    summary = json.loads((work / "results/train/rec-stepwise-ee/train_summary.json").read_text())
    assert summary["config"]["model_dir"] == str((work / "results/train/rec-stepwise/final").resolve())
    assert summary["config"]["exit_weights"] == "aggressive" and summary["config"]["exit_kd_weight"] == 1.0
    loss = pd.read_csv(work / "results/train/rec-stepwise-ee/loss.csv")
    assert (loss.ce == loss.ce_exit2).all() and (loss.kd > 0).all()
    assert loss.loss.to_numpy() == pytest.approx((0.1 * loss.ce_exit1 + loss.ce_exit2 + 0.1 * loss.kd).to_numpy(),
                                                 rel=1e-4)
    thresholds = config["eval"]["exit_task_thresholds"]["max_prob"]
    for name in ("rec-stepwise", "rec-stepwise-ee"):
        result = json.loads((work / f"results/eval/{name}.json").read_text())
        exits = result["exits"]
        assert exits["loops"] == 2 and [e["exit"] for e in exits["tasks"]] == [1, 2]
        assert exits["tasks"][1]["acc_avg"] == result["acc_avg"]
        assert exits["ppl"]["wiki"]["exits"][1]["ppl"] == pytest.approx(result["ppl_wiki"], rel=1e-6)
        assert len(exits["ppl"]["wiki"]["thresholds"]["max_prob"]) == 12
        expected = {"max_prob": thresholds} if name == "rec-stepwise-ee" else {}  # parents: held-out only
        assert {c: [t["threshold"] for t in ts] for c, ts in exits["task_thresholds"].items()} == expected
    assert "exits" not in json.loads((work / "results/eval/rec-average.json").read_text())
    table = pd.read_csv(work / "results/tables/early_exit.csv")
    assert list(zip(table.variant, table.exit)) == [("rec-stepwise", 1), ("rec-stepwise", 2),
                                                    ("rec-stepwise-ee", 1), ("rec-stepwise-ee", 2)]
    ee = table[table.variant == "rec-stepwise-ee"].set_index("exit")
    assert list(ee.paper_acc_avg) == [48.0, 52.6]


def test_throughput_stage_for_the_variants_asking(run):
    """rec-stepwise and rec-stepwise-ee ask for throughput: each job measures the original's
    generate beside the variant; the early-exit variant also exits at the task thresholds,
    and the table pairs each setting with the accuracy of what it generates."""
    work, config = run
    variants = pd.read_csv(config["variants"], sep="\t")
    asking = list(variants.variant[variants.throughput])
    assert sorted(p.stem for p in (work / "results/throughput").iterdir()) == sorted(asking)
    thresholds = config["eval"]["exit_task_thresholds"]["max_prob"]
    ee = json.loads((work / "results/throughput/rec-stepwise-ee.json").read_text())
    assert [s["setting"] for s in ee["settings"]] == ["hf_original", "hf", "depthwise"] + [
        f"exit_max_prob_{t:g}" for t in thresholds]
    assert ee["prompts"] == config["throughput"]["prompts"]
    assert ee["new_tokens"] == config["throughput"]["max_new_tokens"] and ee["heldout"].endswith("tokens/tiny/heldout_wiki")
    assert ee["original"].endswith("results/models/base/tiny")
    table = pd.read_csv(work / "results/tables/throughput.csv")
    assert list(dict.fromkeys(table.variant)) == asking
    summary = pd.read_csv(work / "results/tables/summary.csv").set_index("variant")
    for row in table.itertuples():
        if row.setting in ("hf", "depthwise"):
            assert row.acc_avg == pytest.approx(summary.loc[row.variant, "acc_avg"])
        if row.setting == "hf_original":
            assert row.acc_avg == pytest.approx(summary.loc["full-original", "acc_avg"]) and row.speedup == 1.0
    result = json.loads((work / "results/eval/rec-stepwise-ee.json").read_text())
    at = result["exits"]["task_thresholds"]["max_prob"][0]
    exit_row = table[table.setting == f"exit_max_prob_{thresholds[0]:g}"].iloc[0]
    assert exit_row.acc_avg == pytest.approx(100 * at["acc_avg"]) and 0 <= exit_row.agreement_with_no_exit <= 100


def test_simulated_throughput_beside_measured_and_the_papers(run):
    """The paper's procedure for the same variants: step times measured at batch 1, 2, 4, 8
    for the variant and the original, exits from the eval JSON (none, oracle, each task
    threshold), and the table pairs each with the measured setting and the paper's row."""
    work, config = run
    variants = pd.read_csv(config["variants"], sep="\t")
    asking = list(variants.variant[variants.throughput])
    assert sorted(p.stem for p in (work / "results/simulate").iterdir()) == sorted(asking)
    sim = json.loads((work / "results/simulate/rec-stepwise-ee.json").read_text())
    assert sim["model"]["batches"] == sim["original"]["batches"] == [1, 2, 4, 8]
    assert sim["model"]["loops"] == 2 and sim["original"]["loops"] == 1 and sim["heldout_set"] == "wiki"
    thresholds = config["eval"]["exit_task_thresholds"]["max_prob"]
    assert [s["exit"] for s in sim["settings"]] == ["none", "oracle"] + [f"max_prob:{t:g}" for t in thresholds]
    oracle = json.loads((work / "results/eval/rec-stepwise-ee.json").read_text())["exits"]["ppl"]["wiki"]["oracle"]
    assert sim["settings"][1]["exit_at"] == oracle["exit_at"]
    table = pd.read_csv(work / "results/tables/throughput_simulated.csv")
    assert list(dict.fromkeys(table.variant)) == asking
    ee = table[table.variant == "rec-stepwise-ee"].set_index("exit")
    measured = json.loads((work / "results/throughput/rec-stepwise-ee.json").read_text())["settings"]
    assert ee.loc["none", "measured_x_vanilla"] == next(s["speedup"] for s in measured if s["setting"] == "depthwise")
    assert math.isnan(ee.loc["oracle", "measured_tokens_per_s"])
    assert (table.paper_x_vanilla == 2.66).all() and (table.paper_x_sequence_wise == 1.88).all()
    assert (work / "results/tables/throughput_simulated.md").is_file()


def test_second_run_does_nothing_and_one_variant_reruns_alone(run):
    work, _ = run
    dry = snakemake(work, "all", "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    target = work / "results/eval/rec-average.json"
    before = json.loads(target.read_text())
    target.unlink()
    again = snakemake(work, "results/eval/rec-average.json")
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "evaluate" in log and "uptrain" not in log and "convert" not in log
    after = json.loads(target.read_text())
    for key in [k for k in before if k.startswith(("ppl_", "acc_"))]:
        assert after[key] == pytest.approx(before[key], rel=1e-6), key


def test_html_report(run):
    work, _ = run
    out = snakemake(work, "--report", str(work / "report.html"))
    assert out.returncode == 0, out.stderr[-3000:]
    html = (work / "report.html").read_text(errors="replace")
    assert "summary" in html and "loss_curves.png" in html


def test_interrupted_uptraining_resumes_on_rerun(run):
    """Stop Snakemake (as a cancelled cluster job would be) once the first checkpoint of
    an uptrain job exists; the rerun resumes from that checkpoint and completes the run.
    Runs last: it retrains rec-average with more steps."""
    import signal
    import time

    work, config = run
    out = work / "results/train/rec-average"
    # 32 steps: every default-budget row gets them, and rec-stepwise-ee's new data (its
    # parent's 32 steps, then its own) must still fit the test's data.max_train_tokens
    longer = {**config["train"], "tokens": 32 * config["train"]["batch_tokens"], "save_steps": 2}
    (work / "longer.yaml").write_text(yaml.safe_dump({"train": longer}))
    cmd = [SNAKEMAKE, "--forcerun", "uptrain", "--cores", "1", "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(work / "test.yaml"), str(work / "longer.yaml"), "--",
           "results/train/rec-average/final"]  # targets are relative to -d
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    # A checkpoint is complete once its manifest is written (last).
    while not list((out / "checkpoints").glob("checkpoint-*/rrt_manifest.json")) and time.time() < deadline:
        assert proc.poll() is None, "uptrain finished before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert not (out / "final").exists()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*/rrt_manifest.json"))
    assert saved

    rerun = subprocess.run(cmd[:1] + ["--rerun-incomplete"] + cmd[3:], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_step"] >= saved[0] and summary["steps"] == 32
    loss = pd.read_csv(out / "loss.csv")
    assert list(loss.step) == list(range(1, 33))  # the history before the interruption is kept
