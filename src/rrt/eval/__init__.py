"""Evaluation: held-out perplexity (`perplexity`), the 7 few-shot tasks through lm-eval
(`tasks`), and one JSON per model (`evaluate`)."""
