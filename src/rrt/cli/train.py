"""Handler of `rrt train`."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import UsageError, first_line
from ..model.load import load_config_dir
from ..flags import explicit_flags, section_of
from ..settings import TrainSettings
from ..train.trainer import train as train_model
from . import checks
from .tokenizer_check import same_tokenizer


def settings_of(args) -> TrainSettings:
    """The run's settings: --settings JSON (else the defaults), each flag given laid over it."""
    return section_of(args, TrainSettings, "train")


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
    same_tokenizer(args.model, "--model", data, f"--data {data}")
    kd_flags = [f for f in explicit_flags(args, TrainSettings) if f.startswith("--kd-")]
    if kd_flags and args.teacher is None:
        raise UsageError(f"{kd_flags[0]} needs --teacher")
    if args.teacher is not None:
        load_config_dir(args.teacher, "--teacher")
        checks.check_weights(args.teacher, "--teacher")
        same_tokenizer(args.teacher, "--teacher", data, f"--data {data}")
    checks.output_dir(args.out, "--out")
    if args.time_limit is not None:
        checks.positive("--time-limit", args.time_limit)


def train(args) -> None:
    settings = settings_of(args)
    _check(args)
    if settings.deepspeed is not None and not Path(settings.deepspeed).is_file():
        raise UsageError(f"--deepspeed file {settings.deepspeed} does not exist")
    out = Path(args.out)
    # A failed run removes what it created (OUT and missing parents), unless it got as far
    # as a checkpoint it can resume from; an OUT that existed before is never touched.
    with checks.removed_on_error(out, keep=lambda p: any((p / "checkpoints").glob("checkpoint-*"))), \
            _usage_errors():
        train_model(args.model, args.data, args.out, settings=settings, teacher_dir=args.teacher,
                    keep_checkpoints=args.keep_checkpoints, time_limit_minutes=args.time_limit,
                    requeue=args.requeue)


@contextlib.contextmanager
def _usage_errors():
    """The library's ValueErrors are bad settings or data: one-line usage errors."""
    try:
        yield
    except ValueError as e:
        raise UsageError(first_line(e)) from None
