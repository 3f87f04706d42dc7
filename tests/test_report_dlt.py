"""The report's Dynamic Layer Tying part: the comparison "learned vs fixed tying at equal
size" and the from-scratch one, the DLT paper's reference table, and the tying-map and
trainable-parameter figures, from DLT runs' `dlt_decisions.csv` (the format `rrt train`
writes: step, layer_map, unique_layers, trainable_params, reward, epsilon) and evaluation
JSONs in `rrt eval`'s format, each naming a model directory with a real config.json."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from rrt.model.base_models import tiny_config
from rrt.model.modeling import RecursiveConfig
from rrt.report.aggregate import aggregate
from rrt.report.dlt import FIGURES, FROM_SCRATCH, LEARNED_VS_FIXED, read_decisions, tying_grid
from rrt.settings import TASKS

from .conftest import cli_error

HEADER = "variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\tthroughput\tdlt_max_unique\tdlt_interval\n"
VARIANTS = HEADER + """orig\toriginal\tb\t-\t1\t-\t0\tfalse\t0\tfalse\t-\t-
full\tfull\tb\t-\t1\t-\t0\tfalse\tdefault\tfalse\t-\t-
rec\trecursive\tb\tstepwise\t2\tcycle\t0\tfalse\tdefault\tfalse\t-\t-
rec-avg\trecursive\tb\taverage\t2\tcycle\t0\tfalse\tdefault\tfalse\t-\t-
relaxed\trecursive\tb\taverage\t2\tcycle\t8\tfalse\tdefault\tfalse\t-\t-
rec-kd\trecursive\tb\tstepwise\t2\tcycle\t0\ttrue\tdefault\tfalse\t-\t-
dlt\tdlt\tb\t-\t1\t-\t0\tfalse\tdefault\tfalse\t2\t1
scratch-untied\treduced\tb\tscratch\t1\t-\t0\tfalse\tdefault\tfalse\t-\t-
scratch-dlt\tdlt\tb\tscratch\t1\t-\t0\tfalse\tdefault\tfalse\t-\t2
"""
LAYERS = 4
# The runs' decisions, as `rrt train` writes them (contract of issue 22).
DECISIONS = {
    "dlt": ("step,layer_map,unique_layers,trainable_params,reward,epsilon\n"
            "1,0 1 2 3,4,1000,0.0,1.0\n2,0 1 1 3,3,900,0.25,0.9\n3,0 0 2 2,2,800,0.5,0.81\n"),
    "scratch-dlt": ("step,layer_map,unique_layers,trainable_params,reward,epsilon\n"
                    "2,0 1 2 3,4,1000,0.0,1.0\n4,0 1 1 1,2,800,-0.1,0.5\n"),
}
PARAMS = {"orig": 1000, "full": 1000, "rec": 600, "rec-avg": 600, "relaxed": 640, "rec-kd": 600, "dlt": 600,
          "scratch-untied": 1000, "scratch-dlt": 600}


def _save_config(name: str, model_dir):
    """The model directory's config.json as the package writes it: a plain llama, a
    recursive model (its layer_map: CYCLE), or a DLT model (its learned layer_map)."""
    text = tiny_config(64, layers=LAYERS, hidden_size=16)
    if name.startswith(("rec", "relaxed")):
        RecursiveConfig(text_config=text, num_loops=2, sharing="cycle").save_pretrained(model_dir)
    else:
        text.save_pretrained(model_dir)
        if name in DECISIONS:  # the final map, as the DLT run saves it
            config = json.loads((model_dir / "config.json").read_text())
            last = DECISIONS[name].strip().splitlines()[-1].split(",")[1]
            config["layer_map"] = [int(x) for x in last.split()]
            (model_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture
def results(tmp_path):
    (tmp_path / "variants.tsv").write_text(VARIANTS)
    for d in ("eval", "train", "models"):
        (tmp_path / d).mkdir()
    for i, name in enumerate(PARAMS):
        model_dir = tmp_path / "models" / name
        _save_config(name, model_dir)
        accs = {f"acc_{t}": 0.4 + 0.01 * i for t in TASKS}
        accs["acc_avg"] = 0.4 + 0.01 * i
        accs |= {f"{k}_stderr": 0.05 for k in list(accs)}
        params = {"non_embedding": PARAMS[name] - 200, "lora": 40 if name == "relaxed" else 0, "embedding": 200,
                  "total": PARAMS[name]}
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(
            {"model": str(model_dir), "params": params, "ppl_wiki": 100.0 + i, "ppl_fiction": 200.0 + i, **accs}))
        if name != "orig":
            (tmp_path / "train" / name).mkdir()
            (tmp_path / "train" / name / "train_summary.json").write_text(json.dumps({"tokens": 4096}))
            pd.DataFrame({"step": [1, 2], "tokens_seen": [2048, 4096], "loss": [3.0, 2.5]}).to_csv(
                tmp_path / "train" / name / "loss.csv", index=False)
    for name, text in DECISIONS.items():
        (tmp_path / "train" / name / "dlt_decisions.csv").write_text(text)
    (tmp_path / "reference.tsv").write_text(
        "dlt_ref\tpaper_model\tpaper_setting\tpaper_tied_layers_fraction\tpaper_note\n"
        "summary\tGPT-2\theadline\t0.75\ta lower bound\nwiki2\tGPT-2\tfrom scratch\t\tnot in our reading\n")
    return tmp_path


def run_aggregate(results, **kwargs):
    return aggregate(results / "variants.tsv", None, results / "eval", results / "train", results / "tables",
                     results / "figures", **kwargs)


def test_learned_vs_fixed_tying_at_equal_size(results):
    """A DLT run from the pretrained base under K = 2 beside the plain CYCLE models with 2
    unique layers and the untied full model of the same tokens; from scratch, DLT beside the
    untied model of the same random init. LoRA and KD rows are not of equal size / recipe."""
    run_aggregate(results, dlt_reference_tsv=results / "reference.tsv")
    table = pd.read_csv(results / "tables/dlt_comparison.csv", keep_default_na=False, na_values=[""])
    groups = {g: t.variant.tolist() for g, t in table.groupby("comparison", sort=False)}
    assert groups == {LEARNED_VS_FIXED: ["dlt", "rec", "rec-avg", "full"], FROM_SCRATCH: ["scratch-dlt", "scratch-untied"]}
    rows = table.set_index("variant")
    # unique layers from each model's config.json: the learned map [0 0 2 2], CYCLE 4/2, untied 4
    assert rows["unique_layers"].to_dict() == {"dlt": 2, "rec": 2, "rec-avg": 2, "full": 4, "scratch-dlt": 2,
                                               "scratch-untied": 4}
    assert rows.loc["dlt", "params"] == 600 and rows.loc["full", "params"] == 1000
    assert rows.loc["dlt", "non_embedding_params"] == 400
    assert (rows.loc["dlt", "decisions"], rows.loc["dlt", "final_trainable_params"]) == (3, 800)
    assert (rows.loc["scratch-dlt", "decisions"], rows.loc["scratch-dlt", "final_trainable_params"]) == (2, 800)
    assert math.isnan(rows.loc["rec", "decisions"])
    assert (rows.loc["dlt", "dlt_max_unique"], rows.loc["scratch-dlt", "dlt_max_unique"]) == ("2", "-")
    assert rows.loc["dlt", "ppl_wiki"] == 106.0 and rows.loc["dlt", "acc_avg"] == pytest.approx(46.0)
    assert rows.loc["dlt", "acc_avg_se"] == pytest.approx(5.0)
    markdown = (results / "tables/dlt_comparison.md").read_text()
    assert "46.0 ± 5.0" in markdown and LEARNED_VS_FIXED in markdown
    reference = pd.read_csv(results / "tables/dlt_reference.csv")
    assert reference.dlt_ref.tolist() == ["summary", "wiki2"] and reference.paper_tied_layers_fraction[0] == 0.75
    assert pd.isna(reference.paper_tied_layers_fraction[1])  # a number we do not have stays blank
    for name in FIGURES:
        assert (results / "figures" / name).stat().st_size > 5000
    # every DLT row is also in the summary and the comparison with the paper
    for table_name in ("summary", "paper_comparison"):
        assert {"dlt", "scratch-dlt"} <= set(pd.read_csv(results / f"tables/{table_name}.csv").variant)


def test_the_tying_map_is_depth_by_decision(results):
    decisions = read_decisions(results / "train/dlt/dlt_decisions.csv")
    assert decisions.layer_map.tolist() == [[0, 1, 2, 3], [0, 1, 1, 3], [0, 0, 2, 2]]
    assert np.array_equal(tying_grid(decisions), np.array([[0, 0, 0], [1, 1, 0], [2, 1, 2], [3, 3, 2]]))


def test_without_dlt_runs_the_tables_are_empty_and_the_figures_say_so(results):
    (results / "variants.tsv").write_text("\n".join(VARIANTS.splitlines()[:6]) + "\n")  # no dlt rows
    run_aggregate(results)
    assert pd.read_csv(results / "tables/dlt_comparison.csv").empty
    assert pd.read_csv(results / "tables/dlt_reference.csv").empty
    for name in FIGURES:
        assert (results / "figures" / name).stat().st_size > 1000


@pytest.mark.parametrize("text, message", [
    ("step,layer_map,unique_layers,trainable_params,reward\n1,0 1 2 3,4,1000,0.0\n",
     "missing column 'epsilon'"),
    ("step,layer_map,unique_layers,trainable_params,reward,epsilon\n1,0 1 3 3,3,900,0.0,1.0\n",
     "step 1: layer_map '0 1 3 3' ties a depth to a later one"),
    ("step,layer_map,unique_layers,trainable_params,reward,epsilon\n1,0 1 x 3,3,900,0.0,1.0\n",
     "step 1: layer_map '0 1 x 3' is not space-separated integers"),
    ("step,layer_map,unique_layers,trainable_params,reward,epsilon\n1,0 1 2 3,4,1000,0,1\n2,0 1,2,500,0,1\n",
     "the layer maps have different depths"),
    (None, "does not exist: the DLT run of 'dlt' writes its decisions there"),
])
def test_a_bad_or_missing_decisions_file_is_one_line(results, capsys, text, message):
    path = results / "train/dlt/dlt_decisions.csv"
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    err = cli_error(capsys, ["aggregate", "--variants", str(results / "variants.tsv"), "--eval-dir",
                             str(results / "eval"), "--train-dir", str(results / "train"),
                             "--tables", str(results / "t"), "--figures", str(results / "f")])
    assert err.startswith("rrt aggregate: error: ") and message in err and "\n" not in err, err
