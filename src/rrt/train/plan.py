"""The arithmetic of a run: micro-batch and accumulation for a token batch, the number of
optimizer steps for a token budget, the warmup of each run, AdamW's betas, and the checks
of a run's settings (`validate_run`)."""
from __future__ import annotations

from ..settings import TRAIN, TrainSettings


def plan_batches(batch_tokens: int, block_size: int, micro_batch_size: int, world_size: int = 1):
    """(micro-batch size, accumulation steps, tokens per optimizer step) so that one step
    sees about `batch_tokens` tokens. The micro-batch shrinks when a whole step needs fewer
    blocks than one micro-batch holds; otherwise accumulation is rounded to the nearest
    integer, so a step sees between 3/4 and 5/4 of batch_tokens in the worst case."""
    if block_size < 2:
        raise ValueError(f"blocks must hold at least 2 tokens, got {block_size}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    blocks_per_rank = batch_tokens / (block_size * world_size)
    if blocks_per_rank < 1:
        raise ValueError(f"batch_tokens={batch_tokens} is smaller than one block of {block_size} tokens"
                         + (f" on each of {world_size} ranks" if world_size > 1 else ""))
    micro = min(micro_batch_size, int(blocks_per_rank))
    accum = max(1, round(blocks_per_rank / micro))
    return micro, accum, micro * accum * block_size * world_size


def blocks_drawn(tokens: int, step_tokens: int, block_size: int) -> int:
    """Blocks a run with a budget of `tokens` draws: its steps' blocks."""
    return num_steps(tokens, step_tokens) * step_tokens // block_size


def num_steps(max_tokens: int, step_tokens: int) -> int:
    """Optimizer steps whose tokens come closest to max_tokens (at least one)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return max(1, round(max_tokens / step_tokens))


def warmup_steps_for(steps: int, warmup_steps: int | None = None,
                     warmup_ratio: float = TRAIN["warmup_ratio"]) -> int:
    """Linear-warmup steps of a run of `steps` optimizer steps: `warmup_steps` when given,
    else round(warmup_ratio * steps) (the paper's 200 of 7,153 and 800 of 28,610 steps)."""
    if warmup_steps is not None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        return int(warmup_steps)
    if not 0 <= warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    return round(warmup_ratio * steps)


def parse_adam_betas(betas) -> list[float]:
    """[beta1, beta2] from "B1,B2" or a pair of numbers, each in [0, 1)."""
    if isinstance(betas, str):
        parts = betas.split(",")
    else:
        parts = list(betas) if isinstance(betas, (list, tuple)) else [betas]
    try:
        values = [float(b) for b in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(0 <= b < 1 for b in values):
        shown = betas if isinstance(betas, str) else ",".join(str(b) for b in parts)
        raise ValueError(f"adam_betas must be two numbers B1,B2 in [0, 1), got {shown!r}")
    return values


def run_config(settings: TrainSettings, model_dir, data_dir, teacher_dir, bf16, progress) -> dict:
    """The run as the trainer records it (train_config.json, the checkpoints' manifests,
    the summary): the settings in the names those files have always used."""
    recipe = settings.early_exit
    return dict(model_dir=model_dir, data_dir=data_dir, max_tokens=settings.tokens, batch_tokens=settings.batch_tokens,
                micro_batch_size=settings.micro_batch_size, lr=settings.lr, warmup_steps=settings.warmup_steps,
                warmup_ratio=settings.warmup_ratio, min_lr_ratio=settings.min_lr_ratio,
                weight_decay=settings.weight_decay, adam_betas=list(settings.adam_betas), seed=settings.seed,
                gradient_checkpointing=settings.gradient_checkpointing, loss_chunk_tokens=settings.loss_chunk_tokens,
                teacher_dir=teacher_dir, kd_kind=settings.kd.loss, kd_weight=settings.kd.weight,
                kd_temperature=settings.kd.temperature, save_steps=settings.save_steps, log_steps=settings.log_steps,
                deepspeed=settings.deepspeed, bf16=bf16, progress=progress,
                exit_weights=None if recipe is None else recipe.weights,
                exit_kd_weight=None if recipe is None else recipe.kd_weight, data_after=list(settings.data_after),
                dlt=settings.dlt.to_dict() if settings.dlt.enabled else None)


def validate_run(config: dict) -> dict:
    """The run's settings that depend on each other (each setting alone is checked by
    TrainSettings): KD means nothing without a teacher, early exit takes none."""
    if config["exit_weights"] is not None:
        if config["teacher_dir"] is not None:
            raise ValueError("early-exit training takes no teacher (its exits distil from its own final exit)")
    else:
        config["exit_kd_weight"] = None
    if config["teacher_dir"] is None:  # KD settings mean nothing without a teacher
        config.update(kd_kind=None, kd_weight=None, kd_temperature=None)
    return config
