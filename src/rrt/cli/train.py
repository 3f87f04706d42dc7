"""Handler of `rrt train`."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import UsageError, first_line
from ..model.load import load_config_dir
from ..settings import EXIT_SCHEDULES, TRAIN
from ..train.plan import parse_adam_betas
from ..train.trainer import train as train_model
from . import checks


def _check(args) -> None:
    """One-line errors for bad arguments, before anything is loaded or created."""
    load_config_dir(args.model, "--model")
    checks.check_weights(args.model, "--model")
    data = Path(args.data)
    if not data.is_dir():
        if data.exists():
            raise UsageError(f"--data {data} is a file, not a directory (give the directory written by `rrt tokenize`)")
        raise UsageError(f"--data directory {data} does not exist")
    if not (data / "index.json").is_file() and not (data / "state.json").is_file():
        raise UsageError(f"--data {data} holds neither blocks written by `rrt tokenize` (index.json) "
                         "nor a dataset saved with save_to_disk")
    kd_flags = [f for f, v in (("--kd-loss", args.kd_loss), ("--kd-weight", args.kd_weight),
                               ("--kd-temperature", args.kd_temperature)) if v is not None]
    if kd_flags and args.teacher is None:
        raise UsageError(f"{kd_flags[0]} needs --teacher")
    if args.teacher is not None:
        load_config_dir(args.teacher, "--teacher")
        checks.check_weights(args.teacher, "--teacher")
    checks.output_dir(args.out, "--out")
    if args.deepspeed is not None and not Path(args.deepspeed).is_file():
        raise UsageError(f"--deepspeed file {args.deepspeed} does not exist")
    for flag, value in (("--max-tokens", args.max_tokens), ("--batch-tokens", args.batch_tokens),
                        ("--micro-batch-size", args.micro_batch_size), ("--save-steps", args.save_steps),
                        ("--log-steps", args.log_steps), ("--loss-chunk-tokens", args.loss_chunk_tokens)):
        checks.at_least(flag, value, 1)
    checks.at_least("--warmup-steps", args.warmup_steps, 0)
    checks.non_negative("--stop-margin", args.stop_margin)
    if args.time_limit is not None:
        checks.positive("--time-limit", args.time_limit)
    checks.positive("--lr", args.lr)
    checks.non_negative("--weight-decay", args.weight_decay)
    for flag, value in (("--warmup-ratio", args.warmup_ratio), ("--min-lr-ratio", args.min_lr_ratio),
                        ("--kd-weight", args.kd_weight)):
        checks.in_unit_interval(flag, value)
    checks.positive("--kd-temperature", args.kd_temperature)
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
    out = Path(args.out)
    # A failed run removes what it created (OUT and missing parents), unless it got as far
    # as a checkpoint it can resume from; an OUT that existed before is never touched.
    with checks.removed_on_error(out, keep=lambda p: any((p / "checkpoints").glob("checkpoint-*"))), \
            _usage_errors():
        train_model(args.model, args.data, args.out, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens,
                    micro_batch_size=args.micro_batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                    warmup_ratio=args.warmup_ratio, min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay,
                    adam_betas=args.adam_betas, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
                    loss_chunk_tokens=args.loss_chunk_tokens, save_steps=args.save_steps, log_steps=args.log_steps,
                    deepspeed=args.deepspeed, keep_checkpoints=args.keep_checkpoints,
                    time_limit_minutes=args.time_limit, stop_margin=args.stop_margin, requeue=args.requeue,
                    exit_weights=_exit_weights(args.exit_weights), exit_kd_weight=args.exit_kd_weight, **kd)


def _exit_weights(value):
    """A schedule name, one number (every intermediate exit; the final one 1.0) or W1,...,WB."""
    if value is None or value in EXIT_SCHEDULES:
        return value
    try:
        weights = [float(w) for w in value.split(",")]
    except ValueError:
        raise UsageError(f"--exit-weights must be {', '.join(EXIT_SCHEDULES)}, a number or comma-separated "
                         f"numbers, got {value!r}") from None
    return weights[0] if len(weights) == 1 else weights


@contextlib.contextmanager
def _usage_errors():
    """The library's ValueErrors are bad settings or data: one-line usage errors."""
    try:
        yield
    except ValueError as e:
        raise UsageError(first_line(e)) from None
