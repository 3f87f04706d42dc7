"""Bad input to every `rrt` command: a one-line error naming the flag (or file) and the
value, a non-zero exit, and nothing left behind; `--debug` shows the traceback instead."""
import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rrt.cli import main
from rrt.errors import UsageError

from .conftest import VOCAB, cli_error, make_tiny

BLOCK = 16


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny llama, a teacher with another vocabulary, and packed blocks."""
    root = tmp_path_factory.mktemp("validation")
    make_tiny("llama", layers=2).save_pretrained(root / "model")
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB + 8, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(root / "other_vocab")
    rows = [[10 + (i + j) % 8 for j in range(BLOCK)] for i in range(8)]
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(root / "data"))
    return root


def _train_argv(dirs, out, *extra):
    return ["train", "--model", str(dirs / "model"), "--data", str(dirs / "data"), "--out", str(out),
            "--max-tokens", "32", "--batch-tokens", "32", *extra]


def _only(tmp_path, *names):
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# --- rrt train ------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,expected", [
    ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
    ("--lr", "inf", "--lr must be a finite number > 0, got inf"),
    ("--lr", "0", "--lr must be a finite number > 0, got 0.0"),
    ("--weight-decay", "-0.1", "--weight-decay must be a finite number >= 0, got -0.1"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0, got nan"),
    ("--min-lr-ratio", "1.5", "--min-lr-ratio must be in [0, 1], got 1.5"),
    ("--min-lr-ratio", "nan", "--min-lr-ratio must be in [0, 1], got nan"),
    ("--warmup-ratio", "nan", "--warmup-ratio must be in [0, 1], got nan"),
    ("--save-steps", "0", "--save-steps must be >= 1, got 0"),
    ("--log-steps", "0", "--log-steps must be >= 1, got 0"),
    ("--kd-weight", "nan", "--kd-weight must be in [0, 1], got nan"),
    ("--kd-weight", "1.5", "--kd-weight must be in [0, 1], got 1.5"),
    ("--kd-temperature", "0", "--kd-temperature must be a finite number > 0, got 0.0"),
    ("--kd-temperature", "inf", "--kd-temperature must be a finite number > 0, got inf"),
])
def test_train_bad_numbers_create_nothing(dirs, tmp_path, capsys, flag, value, expected):
    out = tmp_path / "out"
    teacher = ["--teacher", str(dirs / "model")] if flag.startswith("--kd") else []
    err = cli_error(capsys, _train_argv(dirs, out, *teacher, flag, value))
    assert err == f"rrt train: error: {expected}"
    _only(tmp_path)


def test_train_truncated_weights_name_the_file_and_create_nothing(dirs, tmp_path, capsys):
    model = tmp_path / "model"
    AutoModelForCausalLM.from_pretrained(dirs / "model").save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    argv = _train_argv(dirs, tmp_path / "out")
    argv[argv.index("--model") + 1] = str(model)
    err = cli_error(capsys, argv)
    assert err.startswith(f"rrt train: error: cannot load --model from {model}: model.safetensors: "), err
    _only(tmp_path, "model")
    (model / "model.safetensors").unlink()
    err = cli_error(capsys, argv)
    assert f"--model directory {model} has no weights" in err
    _only(tmp_path, "model")


def test_train_data_file_is_not_called_missing(dirs, tmp_path, capsys):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "a"}\n')
    argv = _train_argv(dirs, tmp_path / "out")
    argv[argv.index("--data") + 1] = str(jsonl)
    err = cli_error(capsys, argv)
    assert f"--data {jsonl} is a file, not a directory" in err and "does not exist" not in err
    _only(tmp_path, "train.jsonl")


def test_train_out_is_a_file(dirs, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("x")
    assert f"--out {out} is a file, not a directory" in cli_error(capsys, _train_argv(dirs, out))
    assert out.read_text() == "x"


def test_train_failure_inside_the_library_removes_what_it_created(dirs, tmp_path, capsys):
    """The teacher's vocabulary is checked once training has started (train_config.json
    written): the new OUT, and the parents the run created, are removed."""
    out = tmp_path / "new" / "deeper" / "out"
    err = cli_error(capsys, _train_argv(dirs, out, "--teacher", str(dirs / "other_vocab")))
    assert "has vocab 104, the student 96" in err
    _only(tmp_path)


def test_train_failure_spares_an_existing_out_and_resumable_checkpoints(dirs, tmp_path, capsys, monkeypatch):
    import rrt.cli.train as cli_train

    def crash(model_dir, data_dir, out_dir, *, checkpoint=False, **kwargs):
        from pathlib import Path

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "train_config.json").write_text("{}")
        if checkpoint:
            (Path(out_dir) / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        raise RuntimeError("killed")

    monkeypatch.setattr(cli_train, "train_model", crash)
    out = tmp_path / "out"
    assert cli_error(capsys, _train_argv(dirs, out), code=1) == "rrt train: error: RuntimeError: killed"
    _only(tmp_path)  # created by this invocation: removed

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cli_error(capsys, _train_argv(dirs, out), code=1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train_config.json"]  # existed: untouched

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(cli_train, "train_model", lambda *a, **k: crash(*a, checkpoint=True, **k))
    cli_error(capsys, _train_argv(dirs, fresh), code=1)
    assert (fresh / "checkpoints" / "checkpoint-2").is_dir()  # resumable: kept


# --- rrt convert ----------------------------------------------------------------------------
@pytest.fixture
def base_dir(tmp_path):
    path = tmp_path / "base"
    make_tiny("llama").save_pretrained(path)
    return path


def _convert_argv(base_dir, out, *extra):
    return ["convert", "--base", str(base_dir), "--out", str(out), "--init", "average", "--loops", "2", *extra]


@pytest.mark.parametrize("alpha", ["0", "-8", "nan", "inf"])
def test_convert_lora_alpha_must_be_positive(base_dir, tmp_path, capsys, alpha):
    err = cli_error(capsys, _convert_argv(base_dir, tmp_path / "rec", "--rank", "4", "--lora-alpha", alpha))
    assert err == f"rrt convert: error: --lora-alpha must be a finite number > 0, got {float(alpha)}"
    _only(tmp_path, "base")


def test_convert_huge_rank_is_recorded_as_what_was_built(base_dir, tmp_path, capsys):
    huge, full = tmp_path / "huge", tmp_path / "full"
    assert main(_convert_argv(base_dir, huge, "--rank", "1000000000")) == 0
    printed = capsys.readouterr().out
    assert "note: --rank 1000000000 is above the size of every attention linear (at most 64): " \
           "built and recorded as full rank" in printed
    assert "note: --rank 1000000000 is above the size of every MLP linear (at most 64)" in printed
    assert main(_convert_argv(base_dir, full, "--rank", "full")) == 0
    a, b = (AutoModelForCausalLM.from_pretrained(p) for p in (huge, full))
    assert (a.config.lora_rank_attn, a.config.lora_rank_mlp) == ("full", "full")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    ids = torch.arange(10).unsqueeze(0)
    torch.testing.assert_close(a(ids).logits, b(ids).logits)


def test_convert_partly_capped_rank_says_where(base_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(_convert_argv(base_dir, out, "--rank", "8", "--rank-attn", "48")) == 0
    printed = capsys.readouterr().out
    assert "note: --rank-attn 48 is capped to the matrix size on self_attn.k_proj (32), self_attn.v_proj (32)" \
        in printed
    assert "--rank 8" not in printed
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.lora_rank_attn, config.lora_rank_mlp) == (48, 8)


def test_convert_out_paths(base_dir, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = cli_error(capsys, _convert_argv(base_dir, a_file))
    assert err == f"rrt convert: error: --out {a_file} already exists (as a file)"
    err = cli_error(capsys, _convert_argv(base_dir, a_file / "rec"))
    assert err == f"rrt convert: error: --out {a_file / 'rec'}: {a_file} is a file, not a directory"
    _only(tmp_path, "base", "file")
    nested = tmp_path / "a" / "b" / "rec"  # missing parents are created
    assert main(_convert_argv(base_dir, nested)) == 0 and (nested / "config.json").is_file()


def test_convert_missing_weights_name_the_directory(base_dir, tmp_path, capsys):
    (base_dir / "model.safetensors").unlink()
    err = cli_error(capsys, _convert_argv(base_dir, tmp_path / "rec"))
    assert err == f"rrt convert: error: --base directory {base_dir} has no weights " \
                  "(model.safetensors or pytorch_model.bin)"


# --- other commands -------------------------------------------------------------------------
def test_base_model_checks_its_flags_first(tmp_path, capsys):
    out = tmp_path / "m"
    err = cli_error(capsys, ["base-model", "--out", str(out), "--source", "tiny", "--hidden-size", "12"])
    assert err == "rrt base-model: error: --hidden-size must be a positive multiple of 8 (4 heads of even size), got 12"
    err = cli_error(capsys, ["base-model", "--out", str(out), "--source", "tiny", "--layers", "0"])
    assert err == "rrt base-model: error: --layers must be >= 1, got 0"
    err = cli_error(capsys, ["base-model", "--out", str(out), "--hub-id", "google/gemma-2b"])
    assert err == "rrt base-model: error: --hub-id needs --source hub (got --source embedded)"
    _only(tmp_path)


def test_corpus_and_tokenize_paths_and_numbers(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = cli_error(capsys, ["corpus", "--out", str(tmp_path / "c"), "--hub-heldout-chars", "0"])
    assert err == "rrt corpus: error: --hub-heldout-chars must be >= 1, got 0"
    err = cli_error(capsys, ["corpus", "--out", str(a_file / "c")])
    assert err == f"rrt corpus: error: --out {a_file / 'c'}: {a_file} is a file, not a directory"
    err = cli_error(capsys, ["tokenize", "--corpus", str(a_file), "--tokenizer", str(tmp_path), "--out",
                             str(tmp_path / "t"), "--shard-dirs", str(tmp_path)])
    assert err.startswith(f"rrt tokenize: error: --corpus {a_file} is a file, not a directory")
    _only(tmp_path, "file")


def test_eval_out_and_weights(tmp_path, capsys):
    model = tmp_path / "model"
    make_tiny("llama", layers=1).save_pretrained(model)
    err = cli_error(capsys, ["eval", "--model", str(model), "--out", str(tmp_path), "--tasks", "piqa"])
    assert err == f"rrt eval: error: --out {tmp_path} is a directory, not a file"
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    err = cli_error(capsys, ["eval", "--model", str(model), "--out", str(tmp_path / "r.json"), "--tasks", "piqa"])
    assert err.startswith(f"rrt eval: error: cannot load --model from {model}: model.safetensors: ")
    _only(tmp_path, "model")


def test_info_json_is_a_directory(base_dir, tmp_path, capsys):
    err = cli_error(capsys, ["info", str(base_dir), "--json", str(tmp_path)])
    assert err == f"rrt info: error: --json {tmp_path} is a directory, not a file"


def test_aggregate_paths(tmp_path, capsys):
    variants = tmp_path / "variants.tsv"
    variants.write_text("variant\tkind\n")
    (tmp_path / "eval").mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    base = ["aggregate", "--variants", str(variants), "--eval-dir", str(tmp_path / "eval"), "--train-dir",
            str(tmp_path / "train"), "--figures", str(tmp_path / "f")]
    err = cli_error(capsys, [*base, "--tables", str(a_file)])
    assert err == f"rrt aggregate: error: --tables {a_file} is a file, not a directory"
    err = cli_error(capsys, [*base, "--tables", str(tmp_path / "t"), "--paper", str(tmp_path / "paper.tsv")])
    assert err == f"rrt aggregate: error: --paper {tmp_path / 'paper.tsv'} does not exist"
    _only(tmp_path, "variants.tsv", "eval", "file")


# --- --debug --------------------------------------------------------------------------------
def test_debug_flag_reraises(base_dir, tmp_path, capsys, monkeypatch):
    argv = _convert_argv(base_dir, tmp_path / "rec", "--lora-alpha", "0")
    with pytest.raises(UsageError, match="--lora-alpha"):
        main(["--debug", *argv])
    with pytest.raises(UsageError, match="--lora-alpha"):
        main([*argv, "--debug"])  # after the subcommand too
    assert main(argv) == 2  # without it: one line, exit 2

    import rrt.cli.model as cli_model

    def boom(*args, **kwargs):
        raise RuntimeError("deep inside")

    monkeypatch.setattr(cli_model, "convert_model", boom)
    monkeypatch.delenv("RRT_DEBUG", raising=False)
    good = _convert_argv(base_dir, tmp_path / "r1")
    assert cli_error(capsys, good, code=1) == "rrt convert: error: RuntimeError: deep inside"
    with pytest.raises(RuntimeError, match="deep inside"):
        main(["--debug", *_convert_argv(base_dir, tmp_path / "r2")])
    monkeypatch.setenv("RRT_DEBUG", "1")  # still works, for errors other than bad input
    with pytest.raises(RuntimeError, match="deep inside"):
        main(_convert_argv(base_dir, tmp_path / "r3"))
    assert main(argv) == 2
