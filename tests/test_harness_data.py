"""Evaluation data for compute nodes without internet (`rrt fetch-eval-data`): the plan names
the datasets of lm-eval's stock task configs and where they go; offline with an empty cache
the fetch fails in one line; and an evaluation with `--data-cache` (offline, as the tests
run) scores the rows of a dataset prepared by `datasets` in the cache's hub layout."""
import json
from pathlib import Path

import datasets
import pytest
import yaml

from rrt.cli import main
from rrt.eval.evaluate import evaluate_model
from rrt.eval.harness_data import MANIFEST, harness_datasets
from rrt.settings import TASKS

from .conftest import cli_error, make_tiny
from .test_evaluate import _oracle_model, one_torch_thread  # noqa: F401 (autouse fixture)
from .test_workflow_config import dry_run, test_config  # noqa: F401 (fixture)

# What lm-eval 0.4.13's configs of the 7 stock tasks name: (lm-eval task, dataset id,
# config (None: the dataset's default), splits the task reads, folder under the cache).
EXPECTED = {
    "lambada": ("lambada_openai", "EleutherAI/lambada_openai", "default", ["test"],
                "EleutherAI___lambada_openai/default"),
    "hellaswag": ("hellaswag", "Rowan/hellaswag", None, ["train", "validation"], "Rowan___hellaswag"),
    "piqa": ("piqa", "baber/piqa", None, ["train", "validation"], "baber___piqa"),
    "winogrande": ("winogrande", "allenai/winogrande", "winogrande_xl", ["train", "validation"],
                   "allenai___winogrande/winogrande_xl"),
    "arc_easy": ("arc_easy", "allenai/ai2_arc", "ARC-Easy", ["train", "validation", "test"],
                 "allenai___ai2_arc/ARC-Easy"),
    "arc_challenge": ("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", ["train", "validation", "test"],
                      "allenai___ai2_arc/ARC-Challenge"),
    "openbookqa": ("openbookqa", "allenai/openbookqa", "main", ["train", "validation", "test"],
                   "allenai___openbookqa/main"),
}


def test_the_datasets_are_those_of_lm_evals_task_configs():
    specs = harness_datasets(list(TASKS))
    assert [s["task"] for s in specs] == list(TASKS) == list(EXPECTED)
    for s in specs:
        name, path, config, splits, _ = EXPECTED[s["task"]]
        assert (s["lm_eval_task"], s["path"], s["name"], s["splits"], s["kwargs"]) == (name, path, config, splits, {})


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    cache = tmp_path / "hf-eval"
    assert main(["fetch-eval-data", "--cache", str(cache), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"would fetch 7 datasets for lm-eval's stock tasks into {cache}:"
    assert lines[1:] == [f"{task}: lm-eval {name} <- {path} config {config or '(default)'} splits {','.join(splits)} "
                         f"-> {cache / folder}" for task, (name, path, config, splits, folder) in EXPECTED.items()]
    assert not cache.exists()
    assert main(["fetch-eval-data", "--cache", str(cache), "--dry-run", "--tasks", "piqa,arc_easy"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["piqa", "arc_easy"]


def test_offline_fetch_into_an_empty_cache_is_one_line_naming_the_task(tmp_path, capsys):
    assert datasets.config.HF_HUB_OFFLINE  # conftest: the offline flags, as on a compute node
    cache = tmp_path / "empty"
    err = cli_error(capsys, ["fetch-eval-data", "--cache", str(cache)], code=1)
    assert err.startswith("rrt fetch-eval-data: error: FetchError: task lambada (lm-eval lambada_openai): dataset "
                          f"EleutherAI/lambada_openai config default is not in {cache} (HF_DATASETS_OFFLINE/"
                          "HF_HUB_OFFLINE is set: run it where the hub is reachable, without them)"), err
    assert not (cache / MANIFEST).exists()
    assert "nothing to fetch" in cli_error(capsys, ["fetch-eval-data", "--cache", str(cache), "--tasks", "none"])
    assert "--tasks must be a list of items, each one of lambada" in cli_error(capsys, ["fetch-eval-data", "--cache", str(cache), "--tasks", "mmlu"])


# Three ARC-Easy-shaped questions whose answers the oracle model scores [right, wrong, right]:
# after "Answer:" it is certain of " the", so it picks the choice "the" (gold in 1 and 3).
ARC_TEST = [{"id": "q1", "question": "x", "choices": {"text": ["dog", "the", "cat"], "label": ["A", "B", "C"]},
             "answerKey": "B"},
            {"id": "q2", "question": "y", "choices": {"text": ["the", "dog"], "label": ["A", "B"]}, "answerKey": "B"},
            {"id": "q3", "question": "z", "choices": {"text": ["cat", "dog", "the"], "label": ["1", "2", "3"]},
             "answerKey": "3"}]


def arc_easy_cache(cache: Path, tmp_path: Path) -> Path:
    """`cache` holding allenai/ai2_arc's ARC-Easy in the hub layout (`<ns>___<name>/<config>/
    <version>/<hash>/`: dataset_info.json and one Arrow file per split), prepared by `datasets`
    itself from a local copy of the dataset (its README declares the configs as the hub repo's
    does); a local copy's folder is named without the namespace, the hub's with it."""
    repo = tmp_path / "local" / "ai2_arc"
    card = {"configs": [{"config_name": "ARC-Easy", "data_files": [
        {"split": split, "path": f"ARC-Easy/{split}.jsonl"} for split in ("train", "validation", "test")]}]}
    (repo / "ARC-Easy").mkdir(parents=True)
    (repo / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    for split, rows in (("train", ARC_TEST[:1]), ("validation", ARC_TEST[1:2]), ("test", ARC_TEST)):
        (repo / "ARC-Easy" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.load_dataset(str(repo), "ARC-Easy", cache_dir=str(cache))
    (cache / "ai2_arc").rename(cache / "allenai___ai2_arc")
    return cache


def test_offline_fetch_of_a_cached_dataset_checks_it_and_writes_the_manifest(tmp_path, capsys):
    cache = arc_easy_cache(tmp_path / "hf-eval", tmp_path)
    assert main(["fetch-eval-data", "--cache", str(cache), "--tasks", "arc_easy"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((cache / MANIFEST).read_text())
    entry = manifest["tasks"]["arc_easy"]
    assert set(manifest["tasks"]) == {"arc_easy"}
    assert {k: entry[k] for k in ("lm_eval_task", "path", "name", "splits")} == {
        "lm_eval_task": "arc_easy", "path": "allenai/ai2_arc", "name": "ARC-Easy",
        "splits": {"train": 1, "validation": 1, "test": 3}}
    assert entry["folder"].startswith("allenai___ai2_arc/ARC-Easy/0.0.0/")
    assert (cache / entry["folder"] / "dataset_info.json").is_file()
    assert f"arc_easy: allenai/ai2_arc ARC-Easy train 1, validation 1, test 3 rows in {cache / entry['folder']}" in out


def test_evaluation_reads_the_stock_task_from_the_data_cache(smollm2_tokenizer, tmp_path):
    """lm-eval's own arc_easy task (its prompt, its test split, no limit) on the cached rows:
    3 items scored exactly as the oracle model is built to; an empty cache in its place fails
    naming the dataset, so it is that folder the evaluation reads."""
    tok = smollm2_tokenizer
    model_dir = tmp_path / "oracle"
    _oracle_model(tok, after=tok(":").input_ids[-1], predict=tok(" the").input_ids[0]).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cache = arc_easy_cache(tmp_path / "hf-eval", tmp_path)
    before = datasets.config.HF_DATASETS_CACHE

    result = evaluate_model(model_dir, tmp_path / "eval.json", tasks=["arc_easy"], source="harness", batch_size=2,
                            data_cache=cache)
    items = result["tasks"]["arc_easy"]["items"]
    assert result["tasks"]["arc_easy"]["n"] == 3 and items["acc"] == [1, 0, 1] and items["acc_norm"] == [1, 0, 1]
    assert result["acc_arc_easy"] == pytest.approx(2 / 3)
    assert datasets.config.HF_DATASETS_CACHE == before  # set for the tasks only
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConnectionError, match="allenai/ai2_arc"):
        evaluate_model(model_dir, tmp_path / "none.json", tasks=["arc_easy"], source="harness",
                       data_cache=tmp_path / "empty")
    assert not (tmp_path / "none.json").exists()


@pytest.mark.parametrize("extra,match", [
    (["--data-cache", "{tmp}"], "--data-cache needs --source harness"),
    (["--source", "harness", "--data-cache", "{tmp}/nope"], "--data-cache {tmp}/nope: no such directory (fill it "
                                                             "with `rrt fetch-eval-data --cache {tmp}/nope`"),
])
def test_data_cache_flag_errors(tmp_path, capsys, extra, match):
    model = tmp_path / "small"
    make_tiny("llama", layers=1).save_pretrained(model)
    err = cli_error(capsys, ["eval", "--model", str(model), "--out", str(tmp_path / "o.json"), "--tasks", "piqa",
                             *[e.format(tmp=tmp_path) for e in extra]])
    assert match.format(tmp=tmp_path) in err


def test_evaluate_jobs_read_the_configured_cache_offline(tmp_path, test_config):  # noqa: F811
    test_config["eval"] |= {"source": "harness", "data_cache": "/scratch/hf eval"}
    code, text = dry_run(tmp_path, test_config, None, "-p")
    assert code == 0, text[-2000:]
    evals = [line.removeprefix("Shell command: ") for line in text.splitlines() if "rrt eval " in line]
    assert len(evals) == 13 and all(line.startswith("HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=") and
                         '"source": "harness"' in line and " --data-cache '/scratch/hf eval' " in line for line in evals)
    test_config["eval"]["source"] = "embedded"  # reads no hub data: neither the flag nor offline mode
    code, text = dry_run(tmp_path, test_config, None, "-p")
    evals = [line.removeprefix("Shell command: ") for line in text.splitlines() if "rrt eval " in line]
    assert code == 0 and len(evals) == 13, text[-2000:]
    assert all(line.startswith("OMP_NUM_THREADS=") and "--data-cache" not in line for line in evals)
