"""Uptraining: the run (`trainer`: HF Trainer, logging, the final model), its arithmetic
(`plan`: batches, steps, warmup, betas), checkpoints and the run's identity
(`checkpoints`), the micro-batch loss (`losses`: CE and KD, optionally chunked over the
LM head) and the knowledge-distillation divergences (`kd`)."""
