"""The model: sharing and initialisation (`sharing`), relaxation (`relax`: per-depth LoRA,
SVD init), the transformers-native model (`modeling`), one spec per family (`families`:
adapter, serving and `rrt plan` figures), conversion (`convert`), reduced-size baselines
(`baselines`), parameter accounting (`params`, `describe`), base models (`base_models`) and
loading (`load`)."""
