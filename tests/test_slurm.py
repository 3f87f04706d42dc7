"""The cluster path on a real SLURM (on loopback, `tests/slurm_cluster.py`: this host as one
node, and two one-CPU nodes on it as partition `two`), through
the README's command, `snakemake --profile slurm ... --configfile=FILE`, run from a
checkout's root as a user would. `make test-slurm` (root, slurm-wlm and munge; ~36 min on 2 cores, docs/cluster.md):

- the test DAG runs as SLURM jobs (ids in Snakemake's output and in every rule's log) and
  gives the same summary table as a local run;
- uptraining on 2 ranks (torchrun, gloo, CPU) inside one allocation logs the 1-rank
  run's losses for the same global batch;
- an uptraining that needs several times its 1-minute time limit pauses before each limit
  and requeues its job, which continues, ending with the loss history of an uninterrupted
  run;
- a job cancelled mid-run (`scancel`) checkpoints on SLURM's SIGTERM, stays cancelled
  (Snakemake reports it failed, submitted once), and a rerun resumes from that checkpoint
  to the same result;
- two nodes (`resources.train.nodes: 2`): srun starts a torchrun on each node, they meet on
  the first, and the losses are the one-process run's; so under DeepSpeed ZeRO-2; and the
  time-limit chain on two nodes ends with the uninterrupted two-node run's `loss.csv`.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from .slurm_cluster import LocalSlurm, missing

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TEST_CONFIG = ".test/config/config.yaml"
VARIANT = "rec-stepwise"
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
# The time-limit chain: ~1,600 optimizer steps of the tiny model (~1.5 min on 2 busy cores)
# against 1-minute jobs that each train for ~20 s (start-up ~15 s, margin 25 s).
CHAIN_STEPS = 1600
# Rules Snakemake runs on the submitting host, not as SLURM jobs: the target rule and every
# rule the workflow marks `localrule: True` (read from the rule files, so a new one counts).
LOCAL_RULES = {"all"} | {
    name
    for smk in (ROOT / "workflow/rules").glob("*.smk")
    for name, body in re.findall(r"^rule (\w+):\n((?:[ \t].*\n|\n)*)", smk.read_text(), re.M)
    if re.search(r"^\s+localrule:\s*True", body, re.M)
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster, or a failure saying why it cannot start (a skip instead where
    RRT_SLURM_OPTIONAL=1: CI machines without root or Debian's packages)."""
    give_up = pytest.skip if os.environ.get("RRT_SLURM_OPTIONAL") == "1" else pytest.fail
    why = missing()
    if why:
        give_up(f"a local SLURM cannot be started here: {why}")
    # not under pytest's private (0700) tmp: munged runs as `munge` and must reach its dir
    state = Path(tempfile.mkdtemp(prefix="rrt-slurm-"))
    slurm = LocalSlurm(state)
    try:
        slurm.start()
    except RuntimeError as e:
        slurm.stop()
        give_up(f"the local SLURM did not start: {e}")
    yield slurm
    slurm.stop()
    shutil.rmtree(state, ignore_errors=True)


def checkout(path: Path) -> Path:
    """A checkout's top level (links to this one's files) with nothing run in it yet."""
    path.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "config", "slurm", ".test"):
        (path / name).symlink_to(ROOT / name)
    return path


def snakemake(root: Path, *args: str, slurm: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """The README's command, from the checkout's root (killed with SIGKILL on timeout: a
    hung Snakemake ignores SIGTERM)."""
    how = ["--profile", "slurm"] if slurm else ["--cores", "2"]
    return subprocess.run([str(BIN / "snakemake"), *how, *args], cwd=root, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def failed(run: subprocess.CompletedProcess, root: Path) -> str:
    """What a failed run printed, and the end of each rule log it left: a SLURM job's own
    error is in its rule's log, not in Snakemake's output."""
    text = (run.stdout + run.stderr)[-5000:]
    for log in sorted((root / "results/logs").rglob("*.log")):
        text += f"\n--- {log.relative_to(root)}:\n" + log.read_text(errors="replace")[-3000:]
    return text


def write_config(root: Path, name: str, variants: list[str], **changes) -> str:
    """The test config restricted to some variants, with `changes` ({section: {key: value}})."""
    config = yaml.safe_load((ROOT / TEST_CONFIG).read_text())
    table = (ROOT / ".test/config/variants.tsv").read_text().splitlines()
    keep = [table[0]] + [line for line in table[1:] if line.split("\t")[0] in variants]
    (root / f"{name}.tsv").write_text("\n".join(keep) + "\n")
    config["variants"] = f"{name}.tsv"
    for section, values in changes.items():
        config.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict):
                config[section].setdefault(key, {}).update(value)
            else:
                config[section][key] = value
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return f"--configfile={name}.yaml"


def seed_inputs(src: Path, dst: Path, variant: str = VARIANT) -> None:
    """What uptraining `variant` needs, copied (with times) from a finished checkout."""
    for rel in ("results/models/base/tiny", "results/data/tokens/tiny", f"results/models/init/{variant}"):
        shutil.copytree(src / rel, dst / rel)
    for rel in ("results/data/corpus", "results/data/shards/tiny"):  # train/index.json points into the shards
        shutil.copytree(src / rel, dst / rel)


class ReleaseRequeued(threading.Thread):
    """SLURM holds a requeued job ~2 minutes before it may start again; as an admin could,
    make such jobs eligible at once (`scontrol update StartTime=now`) so that the test does
    not wait for that. Nothing else about the requeue changes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(2):
            held = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True)
            for line in held.stdout.splitlines():
                job, reason = line.split(maxsplit=1)
                if reason == "BeginTime":
                    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def losses(path: Path) -> list[float]:
    return [float(row["loss"]) for row in csv.DictReader(open(path))]


@pytest.fixture(scope="module")
def dag(cluster, tmp_path_factory):
    """The whole test DAG through SLURM, and the same DAG run locally."""
    root = tmp_path_factory.mktemp("cluster")
    on_slurm = checkout(root / "slurm-run")
    run = snakemake(on_slurm, "all", f"--configfile={TEST_CONFIG}")
    assert run.returncode == 0, failed(run, on_slurm)
    local = checkout(root / "local-run")
    again = snakemake(local, "all", f"--configfile={TEST_CONFIG}", slurm=False)
    assert again.returncode == 0, failed(again, local)
    return on_slurm, run.stdout + run.stderr, local


def test_every_job_ran_on_slurm_and_the_summary_equals_a_local_run(dag):
    on_slurm, output, local = dag
    job_ids = set(SUBMITTED.findall(output))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", output, re.M))  # Snakemake's job stats table
    local_jobs = sum(int(counts.get(rule, 0)) for rule in LOCAL_RULES)
    assert "total" in counts and len(job_ids) == int(counts["total"]) - local_jobs
    logs = sorted((on_slurm / "results/logs").rglob("*.log"))
    assert len(logs) == len(job_ids)
    for log in logs:
        ran_in = re.findall(r"SLURM job (\d+)", log.read_text())
        assert ran_in and set(ran_in) <= job_ids, log
    for table in ("summary.csv", "paper_comparison.csv"):
        assert (on_slurm / "results/tables" / table).read_text() == (local / "results/tables" / table).read_text()


def test_two_ranks_in_one_allocation_log_the_one_rank_losses(dag, tmp_path):
    """Same global batch (2 blocks of 64 tokens per step): 1 rank takes both, each of 2 ranks
    (torchrun, gloo) one. Means and the all-reduce round differently: rel 1e-5."""
    on_slurm, _, _ = dag
    root = checkout(tmp_path / "two-ranks")
    seed_inputs(on_slurm, root)
    config = write_config(root, "two", [VARIANT], resources={"train": {"procs": 2, "threads": 2}})
    run = snakemake(root, f"results/train/{VARIANT}/loss.csv", config)
    assert run.returncode == 0, failed(run, root)
    log = (root / f"results/logs/uptrain/{VARIANT}.log").read_text()
    assert "launch: torchrun --standalone --nnodes 1 --nproc-per-node 2" in log and "SLURM job" in log
    summary = yaml.safe_load((root / f"results/train/{VARIANT}/train_summary.json").read_text())
    assert summary["config"]["world_size"] == 2 and summary["micro_batch_size"] == 1
    one, two = losses(on_slurm / f"results/train/{VARIANT}/loss.csv"), losses(root / f"results/train/{VARIANT}/loss.csv")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(dag, tmp_path_factory):
    """The long uptraining of the chain and kill tests, run locally in one go."""
    on_slurm, _, _ = dag
    root = checkout(tmp_path_factory.mktemp("whole") / "checkout")
    seed_inputs(on_slurm, root)
    config = write_config(root, "long", [VARIANT], train={"tokens": CHAIN_STEPS * 128, "save_steps": 400})
    run = snakemake(root, f"results/train/{VARIANT}/loss.csv", config, slurm=False)
    assert run.returncode == 0, failed(run, root)
    return root / f"results/train/{VARIANT}/loss.csv"


def test_a_run_longer_than_its_time_limit_continues_over_jobs_to_the_same_result(dag, uninterrupted, tmp_path):
    on_slurm, _, _ = dag
    root = checkout(tmp_path / "chain")
    seed_inputs(on_slurm, root)
    config = write_config(root, "long", [VARIANT], train={"tokens": CHAIN_STEPS * 128, "save_steps": 400,
                                                         "stop_margin_s": 25},
                         resources={"train": {"runtime": 1}})
    with ReleaseRequeued():
        run = snakemake(root, f"results/train/{VARIANT}/loss.csv", config, timeout=1800)
    output = run.stdout + run.stderr
    assert run.returncode == 0, failed(run, root)
    # one SLURM job for Snakemake, run (and requeued by itself) several times: its sessions
    assert len(SUBMITTED.findall(output)) == 1
    sessions = [json.loads(line) for line in open(root / f"results/train/{VARIANT}/sessions.jsonl")]
    assert len(sessions) >= 3 and len({s["slurm_job"] for s in sessions}) == 1, sessions
    assert [s["status"] for s in sessions] == ["paused: 25 s before the job's time limit"] * (len(sessions) - 1) + ["done"]
    assert sessions[0]["from_step"] == 0 and sessions[-1]["to_step"] == CHAIN_STEPS
    assert all(a["to_step"] == b["from_step"] for a, b in zip(sessions, sessions[1:])), sessions
    assert (root / f"results/train/{VARIANT}/loss.csv").read_text() == uninterrupted.read_text()


def test_a_cancelled_job_checkpoints_stays_cancelled_and_a_rerun_resumes_to_the_same_result(
        dag, uninterrupted, tmp_path):
    """`scancel` mid-run: SLURM sends SIGTERM, the training saves a checkpoint at the next step
    and stops without requeueing; Snakemake reports the job failed (it submitted it once);
    the same command again resumes from that checkpoint."""
    on_slurm, _, _ = dag
    root = checkout(tmp_path / "cancelled")
    seed_inputs(on_slurm, root)
    config = write_config(root, "long", [VARIANT], train={"tokens": CHAIN_STEPS * 128, "save_steps": 400})
    target = f"results/train/{VARIANT}/loss.csv"
    snake = subprocess.Popen([str(BIN / "snakemake"), "--profile", "slurm", target, config], cwd=root, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    manifest = root / f"results/train/{VARIANT}/checkpoints/checkpoint-400/rrt_manifest.json"
    deadline = time.monotonic() + 600
    while not manifest.exists():
        assert snake.poll() is None and time.monotonic() < deadline, "no checkpoint-400 before the cancel"
        time.sleep(1)
    job = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert len(job) == 1
    subprocess.run(["scancel", job[0]], check=True)
    output, _ = snake.communicate(timeout=600)
    assert snake.returncode != 0 and len(SUBMITTED.findall(output)) == 1, output[-3000:]
    sessions = [json.loads(line) for line in open(root / f"results/train/{VARIANT}/sessions.jsonl")]
    assert len(sessions) == 1 and sessions[0]["status"] == "paused: signal SIGTERM", sessions
    paused_at = sessions[0]["to_step"]
    assert 400 <= paused_at < CHAIN_STEPS
    rerun = snakemake(root, target, config)
    assert rerun.returncode == 0, failed(rerun, root)
    log = (root / f"results/logs/uptrain/{VARIANT}.log").read_text()
    assert f"resuming from checkpoint-{paused_at}" in log, log[-3000:]
    sessions = [json.loads(line) for line in open(root / f"results/train/{VARIANT}/sessions.jsonl")]
    assert [(s["from_step"], s["status"]) for s in sessions] == [(0, "paused: signal SIGTERM"), (paused_at, "done")]
    assert (root / target).read_text() == uninterrupted.read_text()


# Two nodes: partition `two` of the same cluster (rrtn1 and rrtn2, one CPU each: two more
# slurmd daemons on this host, tests/slurm_cluster.py). `resources.train.nodes: 2` makes the
# uptraining's job ask for 2 nodes with one task each; `rrt launch` srun-starts one torchrun
# per node, which meet (c10d) on the first node by its name.
TWO_NODES = {"nodes": 2, "threads": 1}
ON_TWO = ("--set-resources", "uptrain:slurm_partition=two")
# The two-node time-limit chain: 2 x 1-CPU ranks take ~2x the 1-rank time per step; TWO_STEPS
# are ~2 runs of a 1-minute job (start-up ~20 s, margin 20 s).
TWO_STEPS = 400


def ran_on_both_nodes(cluster, output: str) -> int:
    """The job id of the one uptraining Snakemake submitted, after checking that each extra
    node's slurmd launched a task of its first srun step (the torchrun of that node)."""
    jobs = SUBMITTED.findall(output)
    assert len(jobs) == 1, output[-3000:]
    for node in ("rrtn1", "rrtn2"):
        log = (cluster.state / f"slurmd.{node}.log").read_text()
        assert f"launch task StepId={jobs[0]}.0 request" in log, f"{node} ran no task of job {jobs[0]}:\n{log[-2000:]}"
    return int(jobs[0])


@pytest.fixture(scope="module")
def two_node_run(cluster, dag, tmp_path_factory):
    """An uptraining of TWO_STEPS steps on two nodes through SLURM, and the same training run
    locally as one process (the reference)."""
    on_slurm, _, _ = dag
    base = tmp_path_factory.mktemp("two-nodes")
    train = {"tokens": TWO_STEPS * 128, "save_steps": 100}
    one = checkout(base / "one-process")
    seed_inputs(on_slurm, one)
    run = snakemake(one, f"results/train/{VARIANT}/loss.csv", write_config(one, "long", [VARIANT], train=train),
                    slurm=False)
    assert run.returncode == 0, failed(run, one)
    two = checkout(base / "two-nodes")
    seed_inputs(on_slurm, two)
    config = write_config(two, "long", [VARIANT], train=train, resources={"train": TWO_NODES})
    run = snakemake(two, f"results/train/{VARIANT}/loss.csv", config, *ON_TWO)
    assert run.returncode == 0, failed(run, two)
    return one, two, run.stdout + run.stderr


@pytest.mark.two_nodes
def test_two_nodes_through_the_pipeline_log_the_one_process_losses(cluster, two_node_run):
    """One torchrun per node (srun), rendezvous on the first node, 2 ranks with 1 block each:
    the global batch and the losses of 1 process with 2 (rel 4e-6, as the 2-rank parity tests)."""
    one, two, output = two_node_run
    job = ran_on_both_nodes(cluster, output)
    log = (two / f"results/logs/uptrain/{VARIANT}.log").read_text(errors="replace")  # progress bars cut mid-character
    assert (f"launch: srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --kill-on-bad-exit=1 --cpus-per-task=1 "
            f"torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint rrtn1:{29600 + job % 1000} "
            f"--rdzv-id {job} --no-python rrt train") in log, log[-3000:]
    summary = json.loads((two / f"results/train/{VARIANT}/train_summary.json").read_text())
    assert summary["config"]["world_size"] == 2 and summary["micro_batch_size"] == 1
    rows1 = list(csv.DictReader(open(one / f"results/train/{VARIANT}/loss.csv")))
    rows2 = list(csv.DictReader(open(two / f"results/train/{VARIANT}/loss.csv")))
    assert len(rows1) == len(rows2) == TWO_STEPS
    assert [(r["step"], r["lr"]) for r in rows2] == [(r["step"], r["lr"]) for r in rows1]
    assert [float(r["loss"]) for r in rows2] == pytest.approx([float(r["loss"]) for r in rows1], rel=4e-6)


@pytest.mark.two_nodes
def test_two_nodes_under_deepspeed_zero2_log_the_one_process_losses(cluster, dag, tmp_path):
    """ZeRO-2 across the two nodes (gradients reduce-scattered, each rank updating its half of
    the optimizer state); the losses of the test DAG's 1-process run (rel 4e-6)."""
    on_slurm, _, _ = dag
    root = checkout(tmp_path / "zero2")
    seed_inputs(on_slurm, root)
    config = write_config(root, "zero2", [VARIANT], train={"deepspeed": "workflow/deepspeed/zero2.json"},
                          resources={"train": TWO_NODES})
    run = snakemake(root, f"results/train/{VARIANT}/loss.csv", config, *ON_TWO)
    assert run.returncode == 0, failed(run, root)
    ran_on_both_nodes(cluster, run.stdout + run.stderr)
    summary = json.loads((root / f"results/train/{VARIANT}/train_summary.json").read_text())
    assert summary["config"]["world_size"] == 2 and summary["config"]["deepspeed"].endswith("workflow/deepspeed/zero2.json")
    one, two = losses(on_slurm / f"results/train/{VARIANT}/loss.csv"), losses(root / f"results/train/{VARIANT}/loss.csv")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=4e-6)


@pytest.mark.two_nodes
def test_a_two_node_run_longer_than_its_time_limit_continues_over_jobs_to_the_same_result(
        cluster, dag, two_node_run, tmp_path):
    """The time-limit chain on two nodes: rank 0 requeues the job, both nodes' torchruns
    start again and resume from the checkpoint; the loss.csv of the uninterrupted 2-node run."""
    on_slurm, _, _ = dag
    _, whole, _ = two_node_run
    root = checkout(tmp_path / "chain")
    seed_inputs(on_slurm, root)
    config = write_config(root, "long", [VARIANT], train={"tokens": TWO_STEPS * 128, "save_steps": 100,
                                                         "stop_margin_s": 20},
                          resources={"train": {**TWO_NODES, "runtime": 1}})
    with ReleaseRequeued():
        run = snakemake(root, f"results/train/{VARIANT}/loss.csv", config, *ON_TWO, timeout=1200)
    assert run.returncode == 0, failed(run, root)
    ran_on_both_nodes(cluster, run.stdout + run.stderr)
    sessions = [json.loads(line) for line in open(root / f"results/train/{VARIANT}/sessions.jsonl")]
    assert len(sessions) >= 2 and len({s["slurm_job"] for s in sessions}) == 1, sessions
    assert [s["status"] for s in sessions] == ["paused: 20 s before the job's time limit"] * (len(sessions) - 1) + ["done"]
    assert sessions[0]["from_step"] == 0 and sessions[-1]["to_step"] == TWO_STEPS
    assert all(a["to_step"] == b["from_step"] for a, b in zip(sessions, sessions[1:])), sessions
    assert (root / f"results/train/{VARIANT}/loss.csv").read_text() == (whole / f"results/train/{VARIANT}/loss.csv").read_text()
