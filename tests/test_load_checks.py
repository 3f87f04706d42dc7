"""Nothing silently wrong on load (issue 23, part 6): a model directory whose weights do not
cover its config is refused by every command that loads it; plain `from_pretrained` fills
a depth's missing LoRA with B = 0 (the depth runs its shared layer) instead of leaving
memory as it was; a NaN or infinite metric is an error, never a result, and result JSON is
strict; tokens made by another tokenizer are refused by fingerprint, not vocabulary size."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rrt.cli import main
from rrt.data.shards import write_mirror
from rrt.data.tokenizer import tokenizer_fingerprint
from rrt.errors import NonFiniteError
from rrt.eval.evaluate import evaluate_model
from rrt.io import atomic_write_json
from rrt.model.convert import convert
from rrt.model.load import copy_tokenizer
from rrt.model.relax import DepthLinear

from .conftest import cli_error, make_tiny
from .test_data import word_tokenizer, words
from .test_prefix_token import bos_tokenizer
from .test_shards import make_corpus_dir, tokenize_n
from .test_simulate import _eval_json

BLOCK = 8


def _drop(model_dir, keys) -> None:
    """Rewrite model_dir/model.safetensors without `keys` (a partial copy)."""
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if k not in set(keys)}, path, metadata={"format": "pt"})


def _lora_keys(model_dir) -> list[str]:
    return sorted(k for k in load_file(model_dir / "model.safetensors") if k.endswith((".lora_A", ".lora_B")))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """SmolLM2-style word tokenizer (no <bos>) and its tokens in `rrt tokenize`'s layout; a
    tiny llama and its relaxed conversion with that tokenizer; partial copies of both (the
    issue's case: half the LoRA tensors removed); a Gemma 3 model with a Gemma-style
    tokenizer (<bos> first)."""
    root = tmp_path_factory.mktemp("load")
    tok = word_tokenizer(root / "tok")
    rng = torch.Generator().manual_seed(0)
    docs = [("s", words(*torch.randint(0, 50, (int(torch.randint(8, 20, (1,), generator=rng)),),
                                      generator=rng).tolist())) for _ in range(120)]
    write_mirror(root / "mirror", docs[:100], files=2, chunks=1)
    corpus = make_corpus_dir(root / "corpus", wiki=docs[100:])
    tokenize_n(root, root / "mirror", corpus, tok, 1, BLOCK)  # root/tokens-1/{train,heldout_wiki}
    base = make_tiny("llama", layers=4)
    base.save_pretrained(root / "base")
    copy_tokenizer(tok, root / "base")
    convert(base, loops=2, init="average", rank=4).save_pretrained(root / "rec")
    copy_tokenizer(tok, root / "rec")
    shutil.copytree(root / "rec", root / "partial")
    _drop(root / "partial", _lora_keys(root / "rec")[::2])
    shutil.copytree(root / "base", root / "partial-base")
    _drop(root / "partial-base", ["model.layers.1.mlp.up_proj.weight"])
    make_tiny("gemma3", layers=2).save_pretrained(root / "gemma3")
    bos_tokenizer(root / "gemma3")
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": words(1, 2, 3)}) + "\n")
    (root / "eval.json").write_text(json.dumps(_eval_json()))
    return root


# --- weights that do not cover the config ----------------------------------------------
def _commands(root, partial, out):
    held, train = root / "tokens-1" / "heldout_wiki", root / "tokens-1" / "train"
    return {
        "info": ["info", partial],
        "export": ["export", partial, "--out", out],
        "export-unrolled": ["export", partial, "--out", out, "--unrolled"],
        "eval": ["eval", "--model", partial, "--ppl", f"wiki={held}", "--tasks", "none", "--out", out],
        "train": ["train", "--model", partial, "--data", train, "--out", out, "--max-tokens", "32",
                  "--batch-tokens", "16", "--micro-batch-size", "2"],
        "generate": ["generate", "--model", partial, "--prompts", root / "prompts.jsonl", "--out", out,
                     "--max-new-tokens", "2"],
        "throughput": ["throughput", "--model", partial, "--heldout", held, "--out", out, "--prompts", "2",
                       "--prompt-tokens", "4,6", "--max-new-tokens", "2"],
        "simulate": ["simulate", "--model", partial, "--eval", root / "eval.json", "--heldout-set", "wiki",
                     "--prefix-tokens", "4", "--new-tokens", "3", "--max-batch", "1", "--requests", "2",
                     "--out", out],
    }


@pytest.mark.parametrize("command", ["info", "export", "export-unrolled", "eval", "train", "generate", "throughput",
                                     "simulate"])
def test_every_command_refuses_a_partial_relaxed_model(root, tmp_path, capsys, command):
    """The issue's case: half the LoRA tensors removed. Each command fails in one line
    naming the directory and what is missing, exit 2, and writes nothing."""
    partial, out = root / "partial", tmp_path / "out" / "x"
    argv = [str(a) for a in _commands(root, partial, out)[command]]
    line = cli_error(capsys, argv)
    missing = _lora_keys(root / "rec")[::2]
    assert len(missing) == 28
    what = "model" if command.startswith(("info", "export")) else "--model"  # a positional argument there
    assert line.endswith(f"error: {what} {partial}: 28 of 56 LoRA tensors missing from model.safetensors "
                         f"({missing[0]}, {missing[1]}, …); a partial copy, or weights of another config"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["convert", "reduce"])
def test_commands_refuse_a_base_model_missing_a_layer_weight(root, tmp_path, capsys, command):
    partial, out = root / "partial-base", tmp_path / "out"
    argv = {"convert": ["convert", "--base", partial, "--out", out, "--init", "average", "--loops", "2"],
            "reduce": ["reduce", "--base", partial, "--out", out, "--layers", "2"]}[command]
    line = cli_error(capsys, [str(a) for a in argv])
    total = len(load_file(root / "base" / "model.safetensors"))  # the tied head is saved as the embeddings
    assert line.endswith(f"error: --base {partial}: 1 of {total} other tensors missing from model.safetensors "
                         "(model.layers.1.mlp.up_proj.weight); a partial copy, or weights of another config"), line
    assert not out.exists()


def test_complete_models_still_load_in_every_command(root, tmp_path, capsys):
    """The check refuses what is missing only: the complete directories pass."""
    assert main(["info", str(root / "rec")]) == 0
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(root / "rec"), "--ppl", f"wiki={root / 'tokens-1' / 'heldout_wiki'}",
                 "--tasks", "none", "--out", str(out)]) == 0
    assert math.isfinite(json.loads(out.read_text())["ppl_wiki"])
    assert "warning" not in capsys.readouterr().err


def test_from_pretrained_runs_the_shared_layer_where_a_depth_lost_its_lora(root):
    """Plain transformers: the depths whose LoRA pair is incomplete get B = 0 (and a fresh,
    finite A), so they run their shared layer; the logits are the complete model's with
    those depths' B zeroed, bit for bit. The load still reports the missing keys."""
    partial, info = AutoModelForCausalLM.from_pretrained(root / "partial", output_loading_info=True)
    assert sorted(info["missing_keys"]) == _lora_keys(root / "rec")[::2]
    complete = AutoModelForCausalLM.from_pretrained(root / "rec").eval()
    dropped = {k.rsplit(".", 1)[0] for k in info["missing_keys"]}
    assert len(dropped) == 28  # every other key of the sorted list: one of each pair
    for name, module in partial.named_modules():
        if isinstance(module, DepthLinear):
            if name in dropped:
                assert torch.count_nonzero(module.lora_B) == 0 and torch.isfinite(module.lora_A).all()
                with torch.no_grad():
                    complete.get_submodule(name).lora_B.zero_()
            else:
                assert torch.equal(module.lora_B, complete.get_submodule(name).lora_B)
    ids = torch.randint(0, 52, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(partial.eval()(ids).logits, complete(ids).logits)


def test_from_pretrained_zeroes_a_missing_own_bias_and_gives_a_missing_norm_the_family_init(tmp_path):
    model = convert(make_tiny("gpt_neox", layers=4), loops=2, init="average", rank=2, per_depth_norms=True)
    model.save_pretrained(tmp_path / "m")
    keys = load_file(tmp_path / "m" / "model.safetensors")
    bias = next(k for k in sorted(keys) if ".linears." in k and k.endswith(".bias"))
    norm = next(k for k in sorted(keys) if ".norms." in k and k.endswith(".weight"))
    assert torch.count_nonzero(keys[bias]) > 0 and not torch.equal(keys[norm], torch.ones_like(keys[norm]))
    _drop(tmp_path / "m", [bias, norm])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    assert torch.count_nonzero(loaded[bias]) == 0
    assert torch.equal(loaded[norm], torch.ones_like(loaded[norm]))  # LayerNorm's own init


def test_a_fresh_model_is_not_reinitialised():
    """The fill runs on load only: building a model draws the same numbers as before."""
    torch.manual_seed(0)
    a = convert(make_tiny("llama", layers=4), loops=2, init="average", rank=4, lora_init="zero")
    after_a = torch.rand(3)
    torch.manual_seed(0)
    b = convert(make_tiny("llama", layers=4), loops=2, init="average", rank=4, lora_init="zero")
    assert torch.equal(after_a, torch.rand(3))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- NaN or infinite metrics ----------------------------------------------------------
def test_result_json_is_strict_and_a_non_finite_number_is_refused(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(NonFiniteError, match=rf"^{path}: ppl\.wiki\.ppl is nan \(and 1 more\); a result must be "):
        atomic_write_json(path, {"ppl": {"wiki": {"ppl": float("nan"), "tokens": 7}}, "acc": [0.5, float("inf")]})
    assert not path.exists()
    with pytest.raises(NonFiniteError, match=r"acc\[1\] is -inf"):
        atomic_write_json(path, {"acc": [0.5, float("-inf")]})
    atomic_write_json(path, {"ppl": 3.5, "acc": [0.5, None]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}")) == {
        "ppl": 3.5, "acc": [0.5, None]}


def test_eval_of_a_model_giving_nan_fails_naming_the_metric(root, tmp_path, capsys):
    """Complete weights, one of them NaN: `rrt eval` fails in one line naming ppl_wiki
    (exit 1) and writes no result, with and without --exits."""
    model = AutoModelForCausalLM.from_pretrained(root / "rec")
    with torch.no_grad():
        model.base.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    copy_tokenizer(root / "tok", tmp_path / "nan")
    out = tmp_path / "r.json"
    for extra in ([], ["--exits"]):
        line = cli_error(capsys, ["eval", "--model", str(tmp_path / "nan"), "--ppl",
                                  f"wiki={root / 'tokens-1' / 'heldout_wiki'}", "--tasks", "none", "--out", str(out),
                                  *extra], code=1, progress_ok=True)
        assert f"NonFiniteError: evaluation of {tmp_path / 'nan'} (nothing written to {out}): ppl_wiki is nan" in line
        assert not out.exists()


# --- tokens of another tokenizer --------------------------------------------------------
def test_token_stores_record_the_tokenizers_fingerprint(root):
    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(root / "tok"))
    tokens = root / "tokens-1"
    recorded = [json.loads((tokens / "heldout_wiki" / f).read_text())["tokenizer"]["fingerprint"]
                for f in ("manifest.json", "index.json")]
    recorded += [json.loads((tokens / "train" / "index.json").read_text())["tokenizer"]["fingerprint"],
                 json.loads((root / "shard-0-of-1" / "manifest.json").read_text())["tokenizer"]["fingerprint"],
                 json.loads((tokens / "stats.json").read_text())["fingerprint"]]
    assert recorded == [fingerprint] * 5 and fingerprint.startswith("sha256:") and len(fingerprint) == 71


def test_the_fingerprint_survives_a_copy_and_tells_same_size_vocabularies_apart(root, tmp_path):
    gemma_style = AutoTokenizer.from_pretrained(root / "gemma3")
    other = AutoTokenizer.from_pretrained(word_tokenizer(tmp_path / "x", extra=("<x>",)))
    assert len(gemma_style) == len(other) == 53
    assert tokenizer_fingerprint(gemma_style) != tokenizer_fingerprint(other)
    copy_tokenizer(root / "gemma3", tmp_path / "copy")
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "copy")) == tokenizer_fingerprint(gemma_style)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(root / "rec")) == \
        tokenizer_fingerprint(AutoTokenizer.from_pretrained(root / "tok"))


def test_a_gemma3_model_is_refused_on_smollm2_style_tokens(root, tmp_path, capsys):
    """The issue's case: the tokens index the model's embeddings, so the library alone
    scores them (a finite, meaningless perplexity); `rrt eval` and `rrt train` refuse them
    in one line naming both tokenizers."""
    held, train = root / "tokens-1" / "heldout_wiki", root / "tokens-1" / "train"
    gemma = root / "gemma3"
    silent = evaluate_model(gemma, tmp_path / "silent.json", {"wiki": str(held)}, tasks=[], batch_size=4)
    assert math.isfinite(silent["ppl_wiki"])
    theirs = tokenizer_fingerprint(AutoTokenizer.from_pretrained(root / "tok"))
    ours = tokenizer_fingerprint(AutoTokenizer.from_pretrained(gemma))
    out = tmp_path / "r.json"
    line = cli_error(capsys, ["eval", "--model", str(gemma), "--ppl", f"wiki={held}", "--tasks", "none",
                              "--out", str(out)])
    assert line == (f"rrt eval: error: --ppl wiki={held} was tokenized by {root / 'tok'} ({theirs[:19]}…), not by "
                    f"--model {gemma}'s tokenizer ({ours[:19]}…): retokenize with it, or give the model that goes "
                    "with these tokens")
    assert not out.exists()
    line = cli_error(capsys, ["train", "--model", str(gemma), "--data", str(train), "--out", str(tmp_path / "t"),
                              "--max-tokens", "32", "--batch-tokens", "16", "--micro-batch-size", "2"])
    assert line.startswith(f"rrt train: error: --data {train} was tokenized by {root / 'tok'} ({theirs[:19]}…), "
                           f"not by --model {gemma}'s tokenizer"), line
    assert not (tmp_path / "t").exists()
    # a teacher of another tokenizer is refused as well
    line = cli_error(capsys, ["train", "--model", str(root / "rec"), "--teacher", str(gemma), "--data", str(train),
                              "--out", str(tmp_path / "t"), "--max-tokens", "32", "--batch-tokens", "16"])
    assert f"not by --teacher {gemma}'s tokenizer" in line


def test_tokens_without_a_fingerprint_load_with_a_warning(root, tmp_path, capsys):
    """Stores written before the fingerprint was recorded are not checked: one warning line."""
    held = tmp_path / "old"
    shutil.copytree(root / "tokens-1" / "heldout_wiki", held)
    for name in ("manifest.json", "index.json"):
        data = json.loads((held / name).read_text())
        del data["tokenizer"]["fingerprint"]
        (held / name).write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["eval", "--model", str(root / "gemma3"), "--ppl", f"wiki={held}", "--tasks", "none",
                 "--out", str(tmp_path / "r.json")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"warning: --ppl wiki={held} records no tokenizer fingerprint (tokenized before it was "
                        "recorded): its tokens are not checked against --model's tokenizer"]


def test_the_gather_step_refuses_shards_of_another_tokenizer(root, tmp_path, capsys):
    """`rrt tokenize` writes held-out sets with its --tokenizer: shards made by another one
    are refused (one line naming both), nothing written."""
    gemma_tok = bos_tokenizer(tmp_path / "gemma-tok")
    out = tmp_path / "tokens"
    line = cli_error(capsys, ["tokenize", "--corpus", str(root / "corpus"), "--shard-dirs", str(root / "shard-0-of-1"),
                              "--tokenizer", str(gemma_tok), "--out", str(out), "--block-size", str(BLOCK)])
    theirs = tokenizer_fingerprint(AutoTokenizer.from_pretrained(root / "tok"))
    assert line == (f"rrt tokenize: error: the shards were tokenized by {root / 'tok'} ({theirs[:19]}…), not by "
                    f"{gemma_tok} ({tokenizer_fingerprint(AutoTokenizer.from_pretrained(gemma_tok))[:19]}…): its "
                    "held-out sets would not match")
    assert not out.exists()


def test_weights_the_config_does_not_use_load_with_a_warning(root, tmp_path, capsys):
    """Extra tensors (a config with fewer LoRA modules than its weights) do not change the
    model the config describes: it loads, and one warning line names them."""
    shutil.copytree(root / "rec", tmp_path / "extra")
    tensors = load_file(tmp_path / "extra" / "model.safetensors")
    tensors["base.model.layers.0.linears.extra.lora_A"] = torch.zeros(2, 2)
    save_file(tensors, tmp_path / "extra" / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["info", str(tmp_path / "extra")]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: model {tmp_path / 'extra'}: 1 tensors in its weights are not in its config, ignored "
        "(base.model.layers.0.linears.extra.lora_A)"]
