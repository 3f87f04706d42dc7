"""Handler of `rrt launch` (light: no torch import, it only builds and execs a command)."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from ..train.launch import launch_command, slurm_head_node
from . import checks


def launch(args) -> None:
    """Replace this process with the launch of `args.argv` (see rrt.train.launch)."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("give the command to launch after --, e.g. rrt launch --procs-per-node 2 -- rrt train ...")
    for flag, value in (("--nodes", args.nodes), ("--procs-per-node", args.procs_per_node)):
        checks.at_least(flag, value, 1)
    checks.at_least("--gpus-per-node", args.gpus_per_node, 0)
    head = job_id = None
    if args.nodes > 1:
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            raise UsageError(f"--nodes {args.nodes} needs a SLURM allocation (no SLURM_JOB_ID): run it inside sbatch/salloc")
        head = slurm_head_node(job_id)
    command = launch_command(argv, nodes=args.nodes, procs_per_node=args.procs_per_node,
                             gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                             head=head, job_id=job_id)
    print(f"launch: {shlex.join(command)}", file=sys.stderr, flush=True)  # `rrt` itself names the SLURM job
    if args.dry_run:
        print(shlex.join(command))
        return
    if args.procs_per_node > 1 and args.cpus_per_node:  # torchrun would set 1 thread per rank
        os.environ["OMP_NUM_THREADS"] = str(max(1, args.cpus_per_node // args.procs_per_node))
    if command[0] == "torchrun":  # the venv's torchrun, beside this interpreter
        command[0] = str(Path(sys.executable).with_name("torchrun"))
    os.execvp(command[0], command)

