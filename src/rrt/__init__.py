"""Relaxed Recursive Transformers (Bae et al., ICLR 2025) on top of transformers.

`import rrt` registers the `recursive` model type with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` loads a converted model.
"""
from .modeling import RecursiveConfig, RecursiveForCausalLM

__all__ = ["RecursiveConfig", "RecursiveForCausalLM"]
