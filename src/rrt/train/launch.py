"""Starting the training processes from a SLURM allocation (or a laptop).

One node, one process: the command itself. One node, P processes: `torchrun --standalone`
(P ranks on this machine, a free port chosen by torchrun). N nodes: `srun` starts one
torchrun per node of the job's allocation, which rendezvous (c10d) on the allocation's
first node under the job id, and each starts P ranks: RANK/WORLD_SIZE/LOCAL_RANK come from
torchrun, so every rank builds the same seeded data order (Trainer's DistributedSampler)
and rank 0 alone writes results.

Under the Snakemake SLURM plugin a several-node job runs its command in the batch
allocation itself (the `mpi` resource), with SLURM_* variables other than the job id
removed: the node list is asked of SLURM by job id.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

RDZV_PORT_BASE = 29600  # + job id mod 1000: not torchrun's default 29500, and two jobs on a node differ


def rdzv_port(job_id: str) -> int:
    """The rendezvous port of SLURM job `job_id` on its first node."""
    return RDZV_PORT_BASE + int(job_id) % 1000 if str(job_id).isdigit() else RDZV_PORT_BASE


def launch_command(argv: list[str], *, nodes: int = 1, procs_per_node: int = 1, gpus_per_node: int = 0,
                   cpus_per_node: int | None = None, head: str | None = None, job_id: str | None = None,
                   port: int | None = None) -> list[str]:
    """The command line that runs `argv` (a console script, e.g. ["rrt", "train", ...]) on
    `nodes` x `procs_per_node` ranks. `head` and `job_id` are needed for several nodes;
    `cpus_per_node` is what each node's srun task may use (srun's default is one CPU); `port`
    (the rendezvous's) defaults to rdzv_port(job_id)."""
    if not argv:
        raise ValueError("nothing to launch: give the command after --")
    if nodes < 1 or procs_per_node < 1 or gpus_per_node < 0:
        raise ValueError(f"nodes and procs per node must be >= 1 and GPUs >= 0, got {nodes}, "
                         f"{procs_per_node}, {gpus_per_node}")
    if nodes == 1 and procs_per_node == 1:
        return list(argv)
    if nodes == 1:
        return ["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", str(procs_per_node),
                "--no-python", *argv]
    if not head or not job_id:
        raise ValueError(f"a {nodes}-node launch needs a SLURM allocation (its first node and job id)")
    srun = ["srun", "--nodes", str(nodes), "--ntasks", str(nodes), "--ntasks-per-node", "1",
            "--kill-on-bad-exit=1"]
    if gpus_per_node:
        srun.append(f"--gres=gpu:{gpus_per_node}")
    if cpus_per_node:
        srun.append(f"--cpus-per-task={cpus_per_node}")
    return srun + ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(procs_per_node),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{head}:{port or rdzv_port(job_id)}", "--rdzv-id", str(job_id),
                   "--no-python", *argv]


def slurm_head_node(job_id: str) -> str:
    """The first node of a SLURM job's allocation."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or _run(["squeue", "-h", "-j", str(job_id), "-o", "%N"])
    hosts = _run(["scontrol", "show", "hostnames", nodelist]).split()
    if not hosts:
        raise RuntimeError(f"SLURM job {job_id} has no nodes ({nodelist!r})")
    return hosts[0]


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed: {r.stderr.strip() or r.returncode}")
    return r.stdout.strip()


def end_process_group() -> None:
    """Close torch.distributed's default group, if this process opened one (torchrun, DeepSpeed).

    Call it once the work is done, on every rank: a process that exits with the group open
    lets gloo's worker threads meet the interpreter's teardown, and now and then a rank
    aborts there ("terminate called without an active exception") after a finished run,
    failing the job. Not after an error: another rank may still wait in a collective."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for commands that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
