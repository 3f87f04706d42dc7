# Helpers shared by the rules: config validation, the variants table, and where each
# variant's models live. No logic beyond bookkeeping: the work is in the `rrt` package.
import pandas as pd
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

VARIANTS = pd.read_csv(
    config["variants"], sep="\t", dtype=str, keep_default_na=False, comment="#"
).set_index("variant", drop=False)
VARIANTS["loops"] = VARIANTS["loops"].astype(int)
VARIANTS["kd"] = VARIANTS["kd"].str.lower().map({"true": True, "false": False})
validate(VARIANTS, "../schemas/variants.schema.yaml")
if VARIANTS.index.duplicated().any():
    raise ValueError(f"{config['variants']}: duplicate variant names {list(VARIANTS.index[VARIANTS.index.duplicated()])}")
for _name, _row in VARIANTS.iterrows():
    if _row.base not in config["base_models"]:
        raise ValueError(f"{config['variants']}: variant {_name!r} uses base {_row.base!r}, not in base_models")
    if _row.kind == "recursive" and _row.init == "-":
        raise ValueError(f"{config['variants']}: recursive variant {_name!r} needs an init")

wildcard_constraints:
    variant="|".join(VARIANTS.index),
    base="|".join(config["base_models"]),


def variant(wildcards):
    return VARIANTS.loc[wildcards.variant]


def train_tokens(row):
    return config["train"]["tokens"] if row.tokens == "default" else int(row.tokens)


def base_dir(base):
    return f"results/models/base/{base}"


def init_dir(wildcards):
    """The model uptraining starts from."""
    row = variant(wildcards)
    if row.kind in ("original", "full"):
        return base_dir(row.base)
    return f"results/models/init/{row.variant}"


def final_dir(wildcards):
    """The model that is evaluated: the base as is, the converted model when no tokens
    are asked for, else the uptrained one."""
    row = variant(wildcards)
    if row.kind == "original":
        return base_dir(row.base)
    if train_tokens(row) == 0:
        return init_dir(wildcards)
    return f"results/train/{row.variant}/final"


def heldout_sets():
    return config["data"]["heldout"]


def res(group, key, default):
    """Snakemake resources of a rule group, from config['resources'][group]."""
    return config.get("resources", {}).get(group, {}).get(key, default)


def optional_args(**kwargs):
    """--key value for every key whose value is not None."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kwargs.items() if v is not None)


def base_model_args(spec):
    if spec["source"] == "hub":
        return f"--source hub --hub-id {spec['hub_id']}"
    if spec["source"] == "tiny":
        tiny = spec.get("tiny", {})
        return f"--source tiny --layers {tiny.get('layers', 4)} --hidden-size {tiny.get('hidden_size', 32)}"
    return "--source embedded"



def needs_training(name):
    row = VARIANTS.loc[name]
    return row.kind != "original" and train_tokens(row) > 0
