"""Handler of `rrt train`."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..model.load import load_config_dir
from ..settings import TRAIN
from ..train.trainer import parse_adam_betas
from ..train.trainer import train as train_model


def _check(args) -> None:
    """One-line errors for bad arguments, before anything is loaded."""
    load_config_dir(args.model, "--model")
    data = Path(args.data)
    if not data.is_dir():
        kind = "a file, not a directory" if data.exists() else "does not exist"
        raise UsageError(f"--data directory {data} {kind}")
    if not (data / "dataset_info.json").is_file() and not (data / "state.json").is_file():
        raise UsageError(f"--data {data} is not a dataset saved with save_to_disk (e.g. by `rrt tokenize`)")
    kd_flags = [f for f, v in (("--kd-loss", args.kd_loss), ("--kd-weight", args.kd_weight),
                               ("--kd-temperature", args.kd_temperature)) if v is not None]
    if kd_flags and args.teacher is None:
        raise UsageError(f"{kd_flags[0]} needs --teacher")
    if args.teacher is not None:
        load_config_dir(args.teacher, "--teacher")
    if args.deepspeed is not None and not Path(args.deepspeed).is_file():
        raise UsageError(f"--deepspeed file {args.deepspeed} does not exist")
    for flag, value in (("--max-tokens", args.max_tokens), ("--batch-tokens", args.batch_tokens),
                        ("--micro-batch-size", args.micro_batch_size), ("--save-steps", args.save_steps),
                        ("--loss-chunk-tokens", args.loss_chunk_tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise UsageError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if not 0 <= args.warmup_ratio <= 1:
        raise UsageError(f"--warmup-ratio must be in [0, 1], got {args.warmup_ratio}")
    try:
        parse_adam_betas(args.adam_betas)
    except ValueError:
        raise UsageError(f"--adam-betas must be two numbers B1,B2 in [0, 1), got {args.adam_betas!r}") from None


def train(args) -> None:
    _check(args)
    kd = {}
    if args.teacher is not None:
        defaults = TRAIN["kd"]
        kd = {"teacher_dir": args.teacher, "kd_kind": args.kd_loss or defaults["loss"],
              "kd_weight": defaults["weight"] if args.kd_weight is None else args.kd_weight,
              "kd_temperature": defaults["temperature"] if args.kd_temperature is None else args.kd_temperature}
    try:
        train_model(args.model, args.data, args.out, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens,
                    micro_batch_size=args.micro_batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                    warmup_ratio=args.warmup_ratio, min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay,
                    adam_betas=args.adam_betas, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
                    loss_chunk_tokens=args.loss_chunk_tokens, save_steps=args.save_steps, log_steps=args.log_steps,
                    deepspeed=args.deepspeed, keep_checkpoints=args.keep_checkpoints, **kd)
    except ValueError as e:
        raise UsageError(str(e).strip().splitlines()[0]) from None
