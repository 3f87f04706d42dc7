"""Uptraining (paper Sec. 3) with HF Trainer: AdamW, cosine schedule with warmup, gradient
accumulation to a token-batch target, fp32 on CPU / bf16 on GPU, DeepSpeed when given,
optional knowledge distillation from the full-size model, checkpoints and resume.

All parameters are trained (the shared block and every depth's LoRA). With a teacher the
loss is (1 - kd_weight) * CE + kd_weight * KD (the paper does not state its mix).
Checkpoints go to out/checkpoints; a rerun resumes from the last one and continues the
same run (same data order, optimizer and scheduler state).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import torch

from .kd import KINDS, kd_loss


def schedule(max_tokens: int, batch_tokens: int, block_size: int, micro_batch_size: int, world_size: int = 1):
    """(gradient accumulation steps, optimizer steps, tokens per step) so that one step sees
    about batch_tokens tokens and the run about max_tokens."""
    per_micro = micro_batch_size * block_size * world_size
    if batch_tokens < per_micro:
        raise ValueError(f"batch_tokens={batch_tokens} is smaller than one micro-batch "
                         f"({micro_batch_size} x {block_size} tokens x {world_size} ranks)")
    accum = max(1, round(batch_tokens / per_micro))
    step_tokens = per_micro * accum
    return accum, max(1, max_tokens // step_tokens), step_tokens


def _make_trainer_class():
    from transformers import Trainer

    class UptrainTrainer(Trainer):
        """Next-token CE on packed blocks, plus KD against a frozen teacher if given."""

        def __init__(self, *args, teacher=None, kd_kind="fkl", kd_weight=0.5, kd_temperature=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher, self.kd_kind, self.kd_weight, self.kd_temperature = teacher, kd_kind, kd_weight, kd_temperature
            self._parts = {"ce": [], "kd": []}
            # Blocks all have the same length: the mean per micro-batch divided by the
            # accumulation steps (what Trainer does when this is False) is exact.
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs["input_ids"]
            out = model(input_ids=ids, labels=ids)
            loss = out.loss
            self._parts["ce"].append(out.loss.detach().item())
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=ids).logits
                kd = kd_loss(out.logits[:, :-1], teacher_logits[:, :-1], self.kd_kind, self.kd_temperature)
                self._parts["kd"].append(kd.detach().item())
                loss = (1 - self.kd_weight) * out.loss + self.kd_weight * kd
            return (loss, out) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            for name, values in self._parts.items():
                if "loss" in logs and values:
                    logs[name] = sum(values) / len(values)
                    values.clear()
            super().log(logs, *args, **kwargs)

    return UptrainTrainer


def _last_checkpoint(path: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(path)) if path.is_dir() else None


def train(model_dir, data_dir, out_dir, *, max_tokens: int, batch_tokens: int, micro_batch_size: int = 4,
          lr: float = 2e-4, warmup_steps: int = 0, weight_decay: float = 0.0, seed: int = 0, teacher_dir=None,
          kd_kind: str = "fkl", kd_weight: float = 0.5, kd_temperature: float = 1.0, save_steps: int = 100,
          deepspeed: str | None = None, max_steps: int | None = None) -> dict:
    """Uptrain `model_dir` on the packed blocks in `data_dir`; results in `out_dir`.
    `max_steps` stops early (the schedule stays that of the whole run): used to test resume."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, default_data_collator

    import rrt  # noqa: F401

    out_dir = Path(out_dir)
    final = out_dir / "final"
    if final.exists():
        print(f"{final} exists: nothing to do")
        return json.loads((out_dir / "train_summary.json").read_text())
    data = load_from_disk(str(data_dir))
    block = len(data[0]["input_ids"])
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum, steps, step_tokens = schedule(max_tokens, batch_tokens, block, micro_batch_size, world)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    teacher = None
    if teacher_dir is not None:
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=dtype).eval().requires_grad_(False)
        if cuda:
            teacher = teacher.cuda()
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=micro_batch_size,
        gradient_accumulation_steps=accum, max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=warmup_steps, weight_decay=weight_decay, optim="adamw_torch", max_grad_norm=1.0,
        logging_steps=1, save_strategy="steps", save_steps=save_steps, save_total_limit=2, report_to=[],
        seed=seed, data_seed=seed, use_cpu=not cuda, bf16=cuda, deepspeed=deepspeed, dataloader_num_workers=0,
    )
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                                    teacher=teacher, kd_kind=kd_kind, kd_weight=kd_weight,
                                    kd_temperature=kd_temperature)
    if max_steps is not None:  # stop early without changing the schedule of the whole run
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= max_steps:
                    control.should_save, control.should_training_stop = True, True

        trainer.add_callback(Stop())
    resume = _last_checkpoint(out_dir / "checkpoints")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    history = [h for h in trainer.state.log_history if "loss" in h]
    _write_loss_csv(out_dir / "loss.csv", history, step_tokens)
    if max_steps is not None and trainer.state.global_step < steps:
        return {"steps": trainer.state.global_step, "stopped_early": True}
    summary = {"steps": steps, "tokens": steps * step_tokens, "tokens_per_step": step_tokens,
               "gradient_accumulation": accum, "block_size": block, "seconds": seconds,
               "tokens_per_second": (steps * step_tokens) / seconds if seconds else math.nan,
               "resumed_from": resume, "final_loss": history[-1]["loss"] if history else None,
               "teacher": str(teacher_dir) if teacher_dir else None, "kd": kd_kind if teacher_dir else None,
               "kd_weight": kd_weight if teacher_dir else None, "lr": lr, "warmup_steps": warmup_steps}
    tmp = out_dir / ".final.tmp"
    trainer.save_model(str(tmp))
    if (Path(model_dir) / "tokenizer_config.json").exists():
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    tmp.rename(final)
    return summary


def _write_loss_csv(path: Path, history: list[dict], step_tokens: int) -> None:
    fields = ["step", "tokens_seen", "loss", "ce", "kd", "lr"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for h in history:
            w.writerow({"step": h["step"], "tokens_seen": h["step"] * step_tokens, "loss": h["loss"],
                        "ce": h.get("ce", ""), "kd": h.get("kd", ""), "lr": h.get("learning_rate", "")})
    os.replace(tmp, path)


# --- CLI ------------------------------------------------------------------------------
def _cmd_train(args) -> None:
    from .cli import UsageError, load_config_dir

    load_config_dir(args.model, "--model")
    if not (Path(args.data) / "dataset_info.json").is_file():
        raise UsageError(f"--data {args.data}: not a dataset saved by `rrt tokenize`")
    kd_given = any(v is not None for v in (args.kd_loss, args.kd_weight, args.kd_temperature))
    if kd_given and args.teacher is None:
        raise UsageError("--kd-loss/--kd-weight/--kd-temperature need --teacher")
    if args.teacher is not None:
        load_config_dir(args.teacher, "--teacher")
    if args.deepspeed is not None and not Path(args.deepspeed).is_file():
        raise UsageError(f"--deepspeed {args.deepspeed} does not exist")
    if args.kd_weight is not None and not 0 <= args.kd_weight <= 1:
        raise UsageError(f"--kd-weight must be in [0, 1], got {args.kd_weight}")
    try:
        summary = train(args.model, args.data, args.out, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens,
                        micro_batch_size=args.micro_batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                        weight_decay=args.weight_decay, seed=args.seed, teacher_dir=args.teacher,
                        kd_kind=args.kd_loss or "fkl", kd_weight=0.5 if args.kd_weight is None else args.kd_weight,
                        kd_temperature=args.kd_temperature or 1.0, save_steps=args.save_steps,
                        deepspeed=args.deepspeed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(json.dumps(summary, indent=1))


def register(sub) -> None:
    t = sub.add_parser("train", help="uptrain a model on packed blocks (optionally with KD from a teacher)")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True, help="packed training blocks (rrt tokenize .../train)")
    t.add_argument("--out", required=True)
    t.add_argument("--max-tokens", type=int, required=True)
    t.add_argument("--batch-tokens", type=int, required=True, help="tokens per optimizer step")
    t.add_argument("--micro-batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-steps", type=int, default=100)
    t.add_argument("--teacher", default=None, help="full-size model to distil from")
    t.add_argument("--kd-loss", default=None, choices=KINDS)
    t.add_argument("--kd-weight", type=float, default=None, help="loss = (1-w) CE + w KD (default 0.5)")
    t.add_argument("--kd-temperature", type=float, default=None)
    t.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (GPU runs)")
    t.set_defaults(func=_cmd_train)
