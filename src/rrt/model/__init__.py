"""The model: sharing and initialisation (`sharing`), relaxation (`relax`: per-depth LoRA,
SVD init), the transformers-native model (`modeling`), one adapter per family
(`families`), conversion (`convert`), reduced-size baselines (`baselines`), parameter
accounting (`params`, `describe`), base models (`base_models`) and loading (`load`)."""
