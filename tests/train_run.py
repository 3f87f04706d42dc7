"""The tests' shorthand for `rrt.train.trainer.train`: the settings as keywords, in the names
the run's records use (max_tokens, kd_kind, kd_weight, kd_temperature, exit_weights,
exit_kd_weight, stop_margin), made into the `TrainSettings` that `train` takes."""
from rrt.settings import ExitRecipe, KDSettings, TrainSettings
from rrt.train import trainer

RUN_OPTIONS = ("teacher_dir", "keep_checkpoints", "time_limit_minutes", "requeue", "callbacks", "bf16", "progress")
RENAMED = {"max_tokens": "tokens", "stop_margin": "stop_margin_s"}
KD = {"kd_kind": "loss", "kd_weight": "weight", "kd_temperature": "temperature"}
EXIT = {"exit_weights": "weights", "exit_kd_weight": "kd_weight"}


def train_settings(**kwargs) -> TrainSettings:
    kd = {KD[k]: kwargs.pop(k) for k in list(kwargs) if k in KD}
    recipe = {EXIT[k]: kwargs.pop(k) for k in list(kwargs) if k in EXIT}
    kwargs = {RENAMED.get(k, k): v for k, v in kwargs.items()}
    if isinstance(kwargs.get("adam_betas"), str):
        kwargs["adam_betas"] = [float(b) for b in kwargs["adam_betas"].split(",")]
    return TrainSettings(**kwargs, kd=KDSettings(**kd),
                         early_exit=ExitRecipe(**recipe) if recipe.get("weights") is not None else None)


def train(model_dir, data_dir, out_dir, **kwargs):
    options = {k: kwargs.pop(k) for k in RUN_OPTIONS if k in kwargs}
    return trainer.train(model_dir, data_dir, out_dir, train_settings(**kwargs), **options)
