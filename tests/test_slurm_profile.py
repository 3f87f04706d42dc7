"""The cluster command as a user types it, planned without a cluster: `snakemake --profile
slurm -n all` from a fresh clone's root plans the paper experiment, and every job's SLURM
request passes the SLURM plugin's own validation and submit-string code."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

from .conftest import train_settings_in

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CLONE = ("Snakefile", "workflow", "config", "slurm", ".test")


def clone(tmp_path: Path) -> Path:
    """A checkout's top level (links to this one's) with nothing run in it yet."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in CLONE:
        (root / name).symlink_to(ROOT / name)
    return root


def plan(root: Path, *args: str) -> str:
    out = subprocess.run([SNAKEMAKE, "--profile", "slurm", "-n", *args], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    return text


def jobs(text: str) -> list[dict]:
    """Each planned job's rule, resources (as Snakemake will pass them) and threads."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current = {"rule": line.split()[1].rstrip(":"), "threads": 1}
            found.append(current)
        elif current is not None and line.strip().startswith("threads:"):
            current["threads"] = int(line.split(":")[1])
        elif current is not None and line.strip().startswith("resources:"):
            resources = {}
            for item in line.split(":", 1)[1].split(", "):
                key, value = item.strip().split("=", 1)
                resources[key] = int(value) if value.isdigit() else value
            current["resources"] = resources
    return [j for j in found if j["rule"] != "all"]


class _Resources(dict):
    """A job's resources the way the plugin reads them (`.get` and attributes)."""
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def submit_string(job: dict) -> str:
    """What the SLURM plugin would submit for this job: its own validation and builder."""
    fake = SimpleNamespace(resources=_Resources(job["resources"]), threads=job["threads"])
    validate_slurm_extra(fake)
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="", partition="", workdir=None)
    return get_submit_command(fake, params) + set_gres_string(fake)


def test_the_literal_command_plans_the_paper_experiment(tmp_path):
    text = plan(clone(tmp_path), "all")
    planned = jobs(text)
    counts = {rule: sum(j["rule"] == rule for j in planned) for rule in {j["rule"] for j in planned}}
    assert counts["uptrain"] == 96 and counts["evaluate"] == 99 and counts["base_model"] == 3
    assert counts["throughput"] == counts["simulate"] == 8  # config/paper_variants.tsv's rows with throughput true
    for job in planned:
        sbatch = submit_string(job)
        assert f"-t {job['resources']['runtime']}" in sbatch and "--mem " in sbatch
        if job["rule"] == "uptrain":
            assert "--gpus=8" in sbatch and "--cpus-per-task=64" in sbatch and "-t 1440" in sbatch
            assert "--mem 480000" in sbatch and "--nodes" not in sbatch and "--ntasks" not in sbatch
        elif job["rule"] in ("evaluate", "throughput", "simulate"):  # the throughput stages run where evaluation does
            assert "--gpus=1" in sbatch and "-t 240" in sbatch
        else:
            assert "gpu" not in sbatch
    train = [line.removeprefix("Shell command: ") for line in text.splitlines() if "rrt train" in line]
    # a DLT run is one process: `rrt train` itself; the others start 8 ranks through `rrt launch`
    launch = {True: "", False: "rrt launch --nodes 1 --procs-per-node 8 --gpus-per-node 8 --cpus-per-node 64 -- "}
    assert len(train) == 96 and all(
        line.startswith(f"OMP_NUM_THREADS=1 {launch['dlt' in line.split('--out ')[1].split()[0]]}rrt train ")
        # threads are capped at --cores (1) in a dry run only
        and train_settings_in(line)["stop_margin_s"] == 900 and line.endswith("--requeue > " + line.split("> ")[-1])
        for line in train)


def test_two_nodes_ask_for_one_task_per_node_and_gpus_per_node(tmp_path):
    root = clone(tmp_path)
    config = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    config["resources"]["train"]["nodes"] = 2
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    text = plan(root, "results/train/gemma-rec-stepwise/final", f"--configfile={tmp_path / 'two.yaml'}")
    (job,) = [j for j in jobs(text) if j["rule"] == "uptrain"]
    sbatch = submit_string(job)
    assert "--nodes=2" in sbatch and "--ntasks=2" in sbatch and "--gres=gpu:8" in sbatch
    assert "--ntasks-per-gpu" not in sbatch and "--gpus=" not in sbatch
    assert job["resources"]["mpi"] == "srun"  # the plugin runs our command in the allocation, not in its srun
    assert "rrt launch --nodes 2 --procs-per-node 8 --gpus-per-node 8" in text


def test_configfile_picks_another_experiment(tmp_path):
    text = plan(clone(tmp_path), "all", "--configfile=.test/config/config.yaml")
    planned = jobs(text)
    assert sum(j["rule"] == "uptrain" for j in planned) == 12  # the .test table's rows that train
    for job in planned:
        sbatch = submit_string(job)
        assert "gpu" not in sbatch and "--cpus-per-task=1" in sbatch


def test_gres_in_slurm_extra_is_refused_by_the_plugin():
    """Why the profile asks for GPUs as resources: the plugin rejects them in slurm_extra."""
    from snakemake_interface_common.exceptions import WorkflowError

    job = {"rule": "uptrain", "threads": 1, "resources": {"runtime": 60, "mem_mb": 1, "slurm_extra": "--gres=gpu:8"}}
    with pytest.raises(WorkflowError, match="not allowed"):
        submit_string(job)
