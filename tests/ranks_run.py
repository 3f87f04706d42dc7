"""`rrt.train.trainer.train` on every rank of a torchrun launch, for the multi-rank tests:

    torchrun --nproc-per-node 2 tests/ranks_run.py MODEL DATA OUT --steps 4 [--deepspeed CONFIG]
        [--kill-whole-job-at STEP]

The settings are those of the single-rank resume tests (4 blocks of 16 tokens per step, micro-batch
1, lr 1e-2, a checkpoint every step, seed 3). --kill-whole-job-at STEP: once every rank has
written checkpoint-STEP, just before its manifest, rank 0 SIGKILLs the job at once: torchrun's
agent and every rank (as SLURM does to a job), leaving checkpoint-(STEP-1) complete and
checkpoint-STEP without its manifest. Each rank writes its pid to OUT.pids/ at start for that."""
import argparse
import os
import signal
import sys
from pathlib import Path

import torch

BLOCK = 16


def settings_for(steps: int, deepspeed=None):
    """The run's TrainSettings (also what a test's one-rank reference runs)."""
    from rrt.settings import TrainSettings

    return TrainSettings(tokens=steps * 4 * BLOCK, batch_tokens=4 * BLOCK, micro_batch_size=1, lr=1e-2, save_steps=1,
                         warmup_steps=1, seed=3, deepspeed=None if deepspeed is None else str(deepspeed))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--deepspeed", default=None)
    p.add_argument("--kill-whole-job-at", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)

    from rrt.train import checkpoints
    from rrt.train.launch import end_process_group
    from rrt.train.trainer import train

    pids = Path(args.out + ".pids")
    pids.mkdir(exist_ok=True)
    (pids / os.environ["RANK"]).write_text(str(os.getpid()))
    if args.kill_whole_job_at is not None:
        write_manifest = checkpoints.write_manifest

        def killed_before_the_manifest(checkpoint, run, step):
            if step == args.kill_whole_job_at:  # only rank 0 writes manifests
                ranks = [int(f.read_text()) for f in pids.iterdir() if int(f.read_text()) != os.getpid()]
                for pid in [os.getppid(), *ranks, os.getpid()]:  # the agent first: it would restart ranks
                    os.kill(pid, signal.SIGKILL)
            return write_manifest(checkpoint, run, step)

        checkpoints.write_manifest = killed_before_the_manifest
    train(args.model, args.data, args.out, settings_for(args.steps, args.deepspeed), progress=False)
    end_process_group()  # as `rrt train` does: a rank exiting with gloo's group open can abort


def verdict_on_rank(rank: int, init_file: str, cases: list, out: str) -> None:
    """One of 2 gloo ranks (started by torch.multiprocessing): `find_resume` for each
    (checkpoints, run, io_error) case (io_error: reading a checkpoint fails with OSError);
    writes what it returned or raised, what it printed and which files it verified or hashed
    to OUT/rank<rank>.json."""
    import json
    from datetime import timedelta

    import torch.distributed as dist

    from rrt.train import checkpoints

    os.environ["RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    verified, hashed = [], []
    verify, file_sha256 = checkpoints.verify, checkpoints.file_sha256
    io_error = False

    def hashing(path, *args, **kwargs):
        hashed.append(str(path))
        if io_error:
            raise OSError(f"{path}: Input/output error")
        return file_sha256(path, *args, **kwargs)

    checkpoints.verify = lambda path: (verified.append(Path(path).name), verify(path))[1]
    checkpoints.file_sha256 = hashing
    results = []
    for directory, run, io_error in cases:
        printed = []
        try:
            found = checkpoints.find_resume(Path(directory), run, log=printed.append)
            result = {"found": None if found is None else str(found)}
        except ValueError as e:
            result = {"refused": str(e)}
        except (OSError, RuntimeError) as e:
            result = {"failed": f"{type(e).__name__}: {e}"}
        results.append({**result, "printed": printed, "verified": verified[:], "hashed": hashed[:]})
        verified.clear()
        hashed.clear()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
