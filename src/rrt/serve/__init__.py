"""Serving: generating with the depth-wise batching engine, and transformers' `generate`
as the reference."""
