"""Uptraining (paper Sec. 3) with HF Trainer, optionally distilling from a teacher.

What the paper fixes and what this module adds where it is silent:
- AdamW, lr 2e-4, cosine schedule with linear warmup (optionally decaying to
  min_lr_ratio * lr instead of 0), gradient clipping at 1.0 (Trainer's default). The
  paper warms up 200 steps at 15B tokens and 800 at 60B, both ~2.8% of the run: warmup is
  a fraction of the planned steps (`warmup_ratio`) unless given in steps. Its AdamW betas
  are not stated: torch's defaults unless `adam_betas` says otherwise.
- A token budget: one optimizer step sees about `batch_tokens` tokens
  (micro-batch x block length x accumulation x ranks) and the run about `max_tokens`.
- All parameters are trained: for a RecursiveForCausalLM the shared block and every
  depth's LoRA, for a plain model everything.
- `precision` (`rrt.model.precision`): by default bf16 mixed precision on a GPU and fp32 on
  a CPU; `bf16` also on a CPU with native bf16 matmuls. DeepSpeed when a config is given.
- With a teacher: loss = (1 - kd_weight) * CE + kd_weight * KD, KD from `rrt.kd` on the
  predicted positions. The paper does not state its mix; kd_weight = 1 is pure KD.
- Memory switches for paper scale (they change no number, only memory for time):
  gradient checkpointing (per depth for a RecursiveForCausalLM) and a chunked LM-head
  loss (`loss_chunk_tokens`) that never materialises the (tokens x vocab) logits.
- Checkpoints every `save_steps` in out/checkpoints (last 2 complete ones kept). Each is
  complete once its manifest (every file's size and sha256, the step and the run's settings;
  `checkpoints.py`) is written, last. A rerun resumes from the newest checkpoint that
  matches its manifest, skipping damaged or cut-off ones with a line saying why, and
  continues the same run: same data order, optimizer, scheduler and RNG state, so an
  interrupted-and-resumed run ends with the weights and loss history of an uninterrupted
  one. The run's settings are kept in each manifest (and out/train_config.json, for people)
  and a rerun with other settings is refused rather than silently mixed.
- Outputs: out/final (model + tokenizer, renamed into place last, so its existence means the
  run is complete and a rerun only removes what a kill after that rename left), out/loss.csv, out/train_summary.json.
- Watching (`monitor.py`): every logged step's tokens/s, model FLOP/s (MFU on a GPU of known
  peak) and ETA, as one line in the log and, per `report_to`, in out/tensorboard (HF's
  TensorBoardCallback; a resumed run's events continue) or W&B.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import (
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

from ..data.blocks import TokenBlocks, blocks_left_after, is_block_dir
from ..model import modeling  # noqa: F401  registers the recursive model type
from ..model.exits import exit_depths
from ..model.load import load_model_dir
from ..model.precision import use_bf16
from ..settings import TrainSettings
from .checkpoints import (
    CHECKPOINTS,
    ManifestCallback,
    find_resume,
    is_main_process,
    record_run,
    remove_stale,
    run_settings,
    step_of,
    tokens_in_checkpoint,
)
from .dlt import check_run as check_dlt
from .dlt import setup as setup_dlt
from .early_exit import early_exit_losses
from .early_exit import exit_weights as exit_weights_for
from .losses import lm_losses
from .monitor import check_report_to, monitor_callbacks
from .outputs import FINAL_TMP, finish, summary_of
from .plan import blocks_drawn, num_steps, plan_batches, run_config, validate_run, warmup_steps_for
from .time_limit import Paused, StopBeforeLimit, deadline, pause, record_session


# --- data -------------------------------------------------------------------------------
def load_blocks(data_dir):
    """The training blocks and their length: a train/ directory written by `rrt tokenize`
    (token stores, memory-mapped, `rrt.data.blocks`), or a `datasets` directory with one
    `input_ids` column of equal-length rows (its first and last rows are checked, not every
    row, which would read the whole set)."""
    if is_block_dir(data_dir):
        data = TokenBlocks(data_dir)
        if len(data) == 0:
            raise ValueError(f"{data_dir}: the dataset is empty")
        return data, data.block_size
    data = load_from_disk(str(data_dir))
    if not hasattr(data, "column_names") or "input_ids" not in data.column_names:
        raise ValueError(f"{data_dir}: expected a datasets.Dataset with an input_ids column")
    if len(data) == 0:
        raise ValueError(f"{data_dir}: the dataset is empty")
    data = data.select_columns(["input_ids"])
    block = len(data[0]["input_ids"])
    if len(data[len(data) - 1]["input_ids"]) != block:
        raise ValueError(f"{data_dir}: rows have different lengths (expected packed blocks)")
    return data, block


def _new_blocks(data, data_after: list[int], seed: int, step_tokens: int, block: int, needed: int):
    """The blocks that the runs of budgets `data_after` (same seed and batch; a parent's
    uptraining) did not draw, as a dataset the run shuffles and draws from as usual."""
    drawn = [blocks_drawn(t, step_tokens, block) for t in data_after]
    try:
        left = blocks_left_after(len(data), seed, drawn)
    except ValueError as e:
        raise ValueError(f"new data: the store holds {len(data)} blocks: {e}") from None
    if len(left) < needed:
        raise ValueError(f"new data: the store holds {len(data)} blocks, the runs before drew {sum(drawn)}, "
                         f"{len(left)} are left and this run needs {needed}")
    return torch.utils.data.Subset(data, left)


# --- the Trainer ------------------------------------------------------------------------
class UptrainTrainer(Trainer):
    """Causal-LM cross-entropy on packed blocks, mixed with KD against a frozen teacher.

    The loss returned is a per-micro-batch mean (every block has the same length, so
    the mean of the micro-batch means is the token mean of the step); Trainer divides it
    by the accumulation steps (loss_is_scaled_for_ga = False). With `loss_chunk_tokens` the
    LM head runs chunk by chunk (`lm_losses`); the numbers are the same."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher=None, kd_kind=None, kd_weight=None, kd_temperature=None,
                 loss_chunk_tokens=None, exit_weights=None, exit_kd_weight=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = None if teacher is None else teacher.to(self.args.device)
        self.kd_kind, self.kd_weight, self.kd_temperature = kd_kind, kd_weight, kd_temperature
        self.loss_chunk_tokens = loss_chunk_tokens
        self.exit_weights, self.exit_kd_weight = exit_weights, exit_kd_weight
        self._parts: dict[str, list[torch.Tensor]] = {"ce": [], "kd": []}
        for b in range(len(exit_weights or ())):
            self._parts[f"ce_exit{b + 1}"] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs["input_ids"]
        if self.exit_weights:  # early-exit training: every loop's exit, KD from the final one
            with self.accelerator.autocast():  # the exits' heads run outside the model's forward
                loss, ces, kds = early_exit_losses(_WrappedForward(model, self.accelerator.unwrap_model(model)), ids,
                                                   inputs.get("attention_mask"), inputs.get("labels", ids),
                                                   weights=self.exit_weights, kd_weight=self.exit_kd_weight,
                                                   chunk_tokens=self.loss_chunk_tokens)
            for b, ce in enumerate(ces):
                self._parts[f"ce_exit{b + 1}"].append(ce.detach().float())
            self._parts["ce"].append(ces[-1].detach().float())
            if kds:
                self._parts["kd"].append(torch.stack(kds).mean().detach())
            return (loss, {"loss": loss}) if return_outputs else loss
        kwargs = dict(attention_mask=inputs.get("attention_mask"), labels=inputs.get("labels", ids),
                      teacher=self.teacher, kd_kind=self.kd_kind, kd_temperature=self.kd_temperature,
                      chunk_tokens=self.loss_chunk_tokens)
        if self.loss_chunk_tokens:
            # The LM head now runs outside the model's forward, which the Accelerator wraps in
            # autocast under mixed precision: give the head the same autocast. The model itself
            # is the wrapped one (DDP/DeepSpeed); head and config come from the unwrapped one.
            with self.accelerator.autocast():
                ce, kd = lm_losses(_WrappedForward(model, self.accelerator.unwrap_model(model)), ids, **kwargs)
        else:
            ce, kd = lm_losses(model, ids, **kwargs)
        loss = ce
        self._parts["ce"].append(ce.detach().float())
        if kd is not None:
            self._parts["kd"].append(kd.detach())
            loss = (1 - self.kd_weight) * ce + self.kd_weight * kd
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        """Add the mean CE and KD of the micro-batches since the last log (averaged
        over ranks) beside Trainer's total loss."""
        if "loss" in logs:
            for name, values in self._parts.items():
                if values:
                    mean = self.accelerator.reduce(torch.stack(values).mean(), reduction="mean")
                    logs[name] = mean.item()
                    values.clear()
        super().log(logs, *args, **kwargs)


class _WrappedForward:
    """Calls go to the wrapped model (DDP/DeepSpeed engine: their forward hooks run); the
    head, config and submodules come from the unwrapped one."""

    def __init__(self, wrapped, unwrapped):
        self._wrapped, self.config = wrapped, unwrapped.config
        self.get_output_embeddings = unwrapped.get_output_embeddings
        self.get_submodule = unwrapped.get_submodule
        if hasattr(unwrapped, "base"):
            self.base = unwrapped.base

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)


class QuietProgress(ProgressCallback):
    """Trainer's progress bar, with the latest loss as its postfix instead of a printed
    dict per log step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)


# --- DeepSpeed --------------------------------------------------------------------------
def _single_process_env() -> None:
    """DeepSpeed needs a torch.distributed rendezvous; without a launcher (torchrun,
    deepspeed) it looks for MPI. Declare a one-process world instead."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _zero_stage(config_path) -> int:
    return json.loads(Path(config_path).read_text()).get("zero_optimization", {}).get("stage", 0)


# --- the run ----------------------------------------------------------------------------
def _resolve_bf16(bf16, precision: str) -> bool:
    """bf16 mixed precision or fp32: `bf16` (True/False) when given, else the settings'
    `precision` on this run's device (`rrt.model.precision`)."""
    if bf16 is None:
        return use_bf16(precision, "cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(bf16, bool):
        return bf16
    raise ValueError(f"bf16 must be True, False or None (the settings' precision), got {bf16!r}")


def _vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _load_teacher(teacher_dir, dtype, student_vocab: int):
    """The teacher, once: eval mode, frozen, in the compute dtype (the Trainer moves it to
    the training device)."""
    teacher = load_model_dir(teacher_dir, "--teacher", dtype=dtype).eval().requires_grad_(False)
    if _vocab(teacher) != student_vocab:
        raise ValueError(f"teacher {teacher_dir} has vocab {_vocab(teacher)}, the student {student_vocab}")
    return teacher


def _training_args(out_dir: Path, config: dict, micro: int, accum: int, steps: int, bf16: bool):
    """The Trainer's arguments. Gradient checkpointing (`activation_checkpointing`, the
    non-deprecated name in transformers 5.23; non-reentrant) wraps every
    GradientCheckpointingLayer: a plain model's decoder layers, a RecursiveForCausalLM's
    DepthLayers (never its shared block alone, see modeling._set_gradient_checkpointing)."""
    cosine = config["min_lr_ratio"] == 0
    extra = {"deepspeed": config["deepspeed"]} if config["deepspeed"] else {}
    beta1, beta2 = config["adam_betas"]
    return TrainingArguments(
        output_dir=str(out_dir / CHECKPOINTS),
        per_device_train_batch_size=micro, gradient_accumulation_steps=accum, max_steps=steps,
        learning_rate=config["lr"], weight_decay=config["weight_decay"], optim="adamw_torch", max_grad_norm=1.0,
        adam_beta1=beta1, adam_beta2=beta2, activation_checkpointing=config["gradient_checkpointing"],
        lr_scheduler_type="cosine" if cosine else "cosine_with_min_lr", warmup_steps=config["warmup_steps"],
        lr_scheduler_kwargs={} if cosine else {"min_lr_rate": config["min_lr_ratio"]},
        # save_total_limit=None: Trainer would rotate before the new checkpoint has its manifest;
        # ManifestCallback rotates after it (the last KEEP complete checkpoints are kept).
        logging_steps=config["log_steps"], save_strategy="steps", save_steps=config["save_steps"],
        save_total_limit=None, report_to=[], seed=config["seed"], data_seed=config["seed"],
        use_cpu=not torch.cuda.is_available(), bf16=bf16, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(), dataloader_drop_last=True,
        include_num_input_tokens_seen="all", disable_tqdm=not config["progress"], **extra,
    )


def train(model_dir, data_dir, out_dir, settings: TrainSettings | None = None, *, teacher_dir=None,
          keep_checkpoints: bool = False, time_limit_minutes: float | None = None, requeue: bool = False,
          callbacks=(), bf16: bool | None = None, progress: bool = True) -> dict:
    """Uptrain the model in `model_dir` on the packed blocks in `data_dir`; write `out_dir`.

    `settings` is the workflow's `train` section (`rrt.settings.TrainSettings`, checked when
    made; its defaults when None): the token budget, batch, AdamW and schedule, checkpoints,
    KD (used with `teacher_dir`) and early-exit training. Returns the summary (also in
    out_dir/train_summary.json). If out_dir/final exists the run is complete: nothing is done
    and the stored summary is returned. Checkpoints are removed once the final model is in
    place unless keep_checkpoints (at 135M parameters each is ~1.6 GB with the optimizer
    state). `callbacks` are extra TrainerCallbacks. Warmup: `warmup_steps` if given, else
    round(warmup_ratio * planned steps). gradient_checkpointing and loss_chunk_tokens trade
    time for memory and change no number. Bad settings raise ValueError.

    Time limits (`time_limit`): within `time_limit_minutes` of this call (or before the
    SLURM job's end) less `stop_margin_s` seconds, or at SIGTERM/SIGUSR1, the run checkpoints
    at a step boundary and raises `Paused`; rerun to continue, or with `requeue` (in a
    SLURM job) rank 0 first requeues the job, which then continues by itself.

    Early-exit training (`early_exit.py`, `settings.early_exit`): its `weights` (one per loop,
    one number for every intermediate exit, or a schedule name) train every loop's exit, with
    KD from the detached final exit weighted by its `kd_weight`; loss.csv then has a
    ce_exit<b> column per exit."""
    started = time.time()
    hf_logging.disable_progress_bar()  # weight-loading bars; Trainer's own bar stays
    settings = TrainSettings() if settings is None else settings
    if not isinstance(settings, TrainSettings):
        raise TypeError(f"settings must be a TrainSettings, got {type(settings).__name__}")

    out_dir = Path(out_dir)
    final = out_dir / "final"
    if final.exists():
        if is_main_process():  # a run killed between renaming final and its clean-up
            shutil.rmtree(out_dir / FINAL_TMP, ignore_errors=True)
        remove_stale(out_dir, keep_checkpoints)
        print(f"{final} exists: training is complete, nothing to do")
        summary = out_dir / "train_summary.json"
        return json.loads(summary.read_text()) if summary.is_file() else {}
    config = validate_run(run_config(settings, model_dir, data_dir, teacher_dir, bf16, progress))
    check_report_to(settings.report_to)
    max_tokens, batch_tokens, deepspeed = settings.tokens, settings.batch_tokens, settings.deepspeed
    data, block = load_blocks(data_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro, accum, step_tokens = plan_batches(batch_tokens, block, settings.micro_batch_size, world)
    if len(data) < micro * world:
        raise ValueError(f"{data_dir} holds {len(data)} blocks, fewer than one micro-batch ({micro} x {world} ranks)")
    steps = num_steps(max_tokens, step_tokens)
    if settings.dlt.enabled:
        check_dlt(settings.dlt, world_size=world, deepspeed=deepspeed, early_exit=settings.early_exit)
    if settings.data_after:
        data = _new_blocks(data, settings.data_after, config["seed"], step_tokens, block, steps * step_tokens // block)
    use_bf16 = _resolve_bf16(bf16, settings.precision)
    config.update(warmup_steps=warmup_steps_for(steps, settings.warmup_steps, settings.warmup_ratio),
                  warmup_ratio=None if settings.warmup_steps is not None else settings.warmup_ratio,
                  bf16=use_bf16, world_size=world, model_dir=str(Path(model_dir).resolve()),
                  data_dir=str(Path(data_dir).resolve()),
                  teacher_dir=str(Path(teacher_dir).resolve()) if teacher_dir else None,
                  deepspeed=str(Path(deepspeed).resolve()) if deepspeed else None)
    if deepspeed:
        _single_process_env()

    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # leftovers of a run killed while saving its final model
        shutil.rmtree(out_dir / FINAL_TMP, ignore_errors=True)
    run = run_settings(config)

    model = load_model_dir(model_dir, "--model", dtype=torch.float32)  # refuses weights not covering the config
    if deepspeed and isinstance(model, modeling.RecursiveForCausalLM) and _zero_stage(deepspeed) == 3:
        raise ValueError(f"DeepSpeed ZeRO-3 ({deepspeed}) cannot train a recursive model: its shared block runs at "
                         f"each depth through views ZeRO-3's partitioning hooks do not know; use ZeRO-2")
    weights = exit_weights_for(config["exit_weights"], len(exit_depths(model))) \
        if config["exit_weights"] is not None else None
    teacher = None
    if teacher_dir:
        teacher = _load_teacher(teacher_dir, torch.bfloat16 if use_bf16 else torch.float32, _vocab(model))
    # After the TrainingArguments (they start torch.distributed under torchrun or DeepSpeed) and
    # after loading the models (made first, under ZeRO-3 they would load partitioned): with
    # several ranks rank 0 alone checks the checkpoints and tells the others.
    args = _training_args(out_dir, config, micro, accum, steps, use_bf16)
    resume = find_resume(out_dir / CHECKPOINTS, run)  # refuses checkpoints of other settings
    record_run(out_dir, run)
    dlt = None  # Dynamic Layer Tying (dlt.py, one process only): its agent reties the model as it trains
    if settings.dlt.enabled:
        model, dlt = setup_dlt(settings.dlt, model, model_dir, data, out_dir, resume)
    stop = StopBeforeLimit(deadline(time_limit_minutes, started), settings.stop_margin_s)
    trainer = UptrainTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                             teacher=teacher, kd_kind=config["kd_kind"], kd_weight=config["kd_weight"],
                             kd_temperature=config["kd_temperature"], loss_chunk_tokens=settings.loss_chunk_tokens,
                             exit_weights=weights, exit_kd_weight=config["exit_kd_weight"],
                             callbacks=([dlt] if dlt else []) + [ManifestCallback(run)] + list(callbacks)
                               + ([] if keep_checkpoints else [NoLastCheckpoint()]) + [stop]
                               + monitor_callbacks(model, teacher, block, settings, len(weights or ()), world,
                                                   out_dir))
    _swap_progress_bar(trainer)
    if dlt:
        dlt.trainer = trainer

    start_tokens = tokens_in_checkpoint(resume)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    from_step = step_of(resume) if resume else 0
    if stop.paused:
        pause(trainer, stop, out_dir, from_step, requeue)
        raise Paused(trainer.state.global_step, stop.paused)

    summary = summary_of(trainer, config, steps=steps, micro=micro, accum=accum, block=block, seconds=seconds,
                       session_tokens=trainer.state.num_input_tokens_seen - start_tokens, resume=resume)
    if trainer.is_world_process_zero():
        record_session(out_dir, from_step=from_step, to_step=trainer.state.global_step, status="done")
    finish(trainer, out_dir, model_dir, summary, with_kd=teacher is not None or bool(weights),
           keep_checkpoints=keep_checkpoints, exits=len(weights or ()))
    return summary


class NoLastCheckpoint(TrainerCallback):
    """Trainer checkpoints after the last step; the final model is saved right after it, so
    that checkpoint (model + optimizer state, ~1.6 GB and ~7 s at 135M parameters on CPU)
    would only be deleted again."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False


def _swap_progress_bar(trainer) -> None:
    """Keep the console to one progress bar (or nothing when progress is off): Trainer
    otherwise prints a dict per log step."""
    trainer.pop_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())
