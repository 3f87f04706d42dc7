"""Uptraining (`trainer`: HF Trainer, warmup, checkpoints and exact resume), its loss
(`losses`: CE and KD, optionally chunked over the LM head) and the knowledge-distillation
divergences (`kd`)."""
