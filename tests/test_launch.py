"""The launcher (`rrt launch`): the command that starts N nodes x P training processes from a
SLURM allocation, for 1 and 2 nodes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rrt.train.launch import launch_command

RRT = str(Path(sys.executable).with_name("rrt"))
TRAIN = ["rrt", "train", "--model", "m", "--out", "o"]


def test_one_process_runs_the_command_itself():
    assert launch_command(TRAIN) == TRAIN


def test_one_node_runs_torchrun_standalone():
    assert launch_command(TRAIN, procs_per_node=8, gpus_per_node=8) == [
        "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "8", "--no-python", *TRAIN]


def test_two_nodes_run_one_torchrun_per_node_with_a_rendezvous_on_the_first():
    cmd = launch_command(TRAIN, nodes=2, procs_per_node=8, gpus_per_node=8, cpus_per_node=64,
                         head="gpu-001", job_id="4242")
    assert cmd == ["srun", "--nodes", "2", "--ntasks", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                   "--gres=gpu:8", "--cpus-per-task=64",
                   "torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", "gpu-001:29842", "--rdzv-id", "4242", "--no-python", *TRAIN]


def test_two_nodes_without_an_allocation_are_refused():
    with pytest.raises(ValueError, match="needs a SLURM allocation"):
        launch_command(TRAIN, nodes=2, procs_per_node=8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([RRT, "launch", "--nodes", "2", "--", *TRAIN], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "rrt launch: error: --nodes 2 needs a SLURM allocation (no SLURM_JOB_ID): run it inside sbatch/salloc")


def test_cli_dry_run_prints_the_command():
    out = subprocess.run([RRT, "launch", "--procs-per-node", "2", "--dry-run", "--", *TRAIN],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torchrun --standalone --nnodes 1 --nproc-per-node 2 --no-python " + " ".join(TRAIN)


def test_cli_runs_the_command_with_its_exit_code(tmp_path):
    """One process: the command replaces `rrt launch` (its exit code is the job's)."""
    out = subprocess.run([RRT, "launch", "--", sys.executable, "-c", "import sys; print('ran'); sys.exit(75)"],
                         capture_output=True, text=True)
    assert out.returncode == 75 and out.stdout.strip() == "ran"


@pytest.mark.parametrize("argv, message", [
    (["--"], "give the command to launch after --"),
    (["--procs-per-node", "0", "--", "true"], "--procs-per-node must be >= 1, got 0"),
])
def test_cli_bad_input_is_one_line(argv, message):
    out = subprocess.run([RRT, "launch", *argv], capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr.strip().splitlines()[-1]


def test_end_process_group_closes_an_open_group_and_is_a_no_op_without_one(tmp_path):
    """`rrt` closes torch.distributed's group before a rank exits (gloo's threads at the
    interpreter's teardown can abort a finished rank); a second call, or a process that never
    opened one, does nothing."""
    import torch.distributed as dist

    from rrt.train.launch import end_process_group

    end_process_group()  # none open: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        end_process_group()
        assert not dist.is_initialized()
        end_process_group()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
