"""Uptraining (`trainer`: HF Trainer, checkpoints and exact resume) and knowledge
distillation from the full-size model (`kd`)."""
