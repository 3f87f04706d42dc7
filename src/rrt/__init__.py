"""Relaxed Recursive Transformers (Bae et al., ICLR 2025) on top of transformers.

`import rrt` registers the `recursive` model type with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` loads a converted model.

Layout (imports point down this list; nothing imports `cli`):
    errors, io, settings, variants   small bottom modules: errors, atomic files, defaults, the variants table
    model/    sharing, initialisation, relaxation (LoRA/SVD), the model, conversion, baselines
    data/     corpus sources, decontamination, tokenize + pack
    train/    uptraining (HF Trainer), knowledge distillation
    eval/     perplexity, the 7 few-shot tasks through lm-eval
    report/   tables and figures
    cli/      the `rrt` command
"""
from .model.modeling import RecursiveConfig, RecursiveForCausalLM

__all__ = ["RecursiveConfig", "RecursiveForCausalLM"]
