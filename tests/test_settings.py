"""One source of truth: every setting is defined once, in rrt.settings' dataclasses. The
workflow schema's defaults, `rrt train`'s flags and config/README.md's key table agree with
them; bad values are one line naming the key; the library leaves the environment alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from rrt import settings
from rrt.cli import build_parser
from rrt.cli.train import settings_of
from rrt.fields import leaves
from rrt.flags import flag_name, section_of
from rrt.settings import (
    ExitRecipe,
    KDSettings,
    SettingError,
    TrainSettings,
    resolve_config,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
VARIANTS_SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/variants.schema.yaml").read_text())
CONFIGS = ("config/config.yaml", "config/paper.yaml", ".test/config/config.yaml")
MINIMAL = {"variants": "v.tsv", "base_models": {"m": {"source": "tiny"}}}


@pytest.mark.parametrize("raw", [MINIMAL, *CONFIGS])
def test_schema_defaults_are_the_settings(raw):
    """Snakemake's schema validation (set_default) and resolve_config fill a config alike:
    the schema's defaults are the dataclasses' defaults, key for key."""
    config = yaml.safe_load((ROOT / raw).read_text()) if isinstance(raw, str) else json.loads(json.dumps(raw))
    by_schema = json.loads(json.dumps(config))
    validate(by_schema, str(SCHEMA), set_default=True)
    assert resolve_config(config) == by_schema


def test_schema_lists_are_the_settings():
    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert tuple(props["eval"]["properties"]["tasks"]["items"]["enum"]) == settings.TASKS
    assert tuple(props["train"]["properties"]["kd"]["properties"]["loss"]["enum"]) == settings.KD_KINDS
    assert tuple(props["eval"]["properties"]["source"]["enum"]) == settings.EVAL_SOURCES
    assert tuple(props["data"]["properties"]["source"]["enum"]) == settings.DATA_SOURCES
    assert tuple(props["plan"]["properties"]["gpu"]["enum"]) == tuple(settings.GPU_SPECS)
    assert tuple(props["train"]["properties"]["report_to"]["enum"]) == settings.REPORT_TO
    base = props["base_models"]["additionalProperties"]["properties"]["source"]["enum"]
    assert tuple(base) == settings.BASE_SOURCES
    recipe = props["early_exit"]["properties"]["recipes"]["additionalProperties"]["properties"]
    assert tuple(recipe["weights"]["oneOf"][0]["enum"]) == settings.EXIT_SCHEDULES
    row = VARIANTS_SCHEMA["properties"]
    assert tuple(row["init"]["enum"]) == ("-", *settings.INITS)
    assert tuple(row["sharing"]["enum"]) == ("-", *settings.SHARINGS)


def test_config_readme_key_table_is_generated_from_the_settings():
    """config/README.md holds exactly `python -m rrt.settings --markdown` between its markers."""
    out = subprocess.run([sys.executable, "-m", "rrt.settings", "--markdown"], capture_output=True, text=True,
                         check=True).stdout
    text = (ROOT / "config/README.md").read_text()
    start, end = text.index(settings.MARKDOWN_BEGIN), text.index(settings.MARKDOWN_END)
    assert text[start:end + len(settings.MARKDOWN_END)] + "\n" == out
    for key in ("train.tokens", "train.kd.weight", "eval.exit_task_thresholds.max_prob", "resources.train.procs",
                "early_exit.recipes.<name>.weights", "base_models.<name>.tiny.layers", "plan.mfu"):
        assert f"| `{key}` |" in out, key


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("section, value, message", [
    ({"train": {"tokens": "abc"}}, None, "train.tokens must be an integer >= 1, got 'abc'"),
    ({"train": {"lr": 0}}, None, "train.lr must be a finite number > 0, got 0.0"),
    ({"train": {"kd": {"weight": 1.5}}}, None, "train.kd.weight must be in [0, 1], got 1.5"),
    ({"train": {"adam_betas": [0.9]}}, None, "train.adam_betas must be two numbers B1,B2 in [0, 1), got [0.9]"),
    ({"eval": {"limt": 3}}, None, "eval.limt: unknown key (known: source, tasks, limit,"),
    ({"eval": {"tasks": ["piqa", "mmlu"]}}, None, "eval.tasks must be a list of items, each one of lambada,"),
    ({"data": {"seed": 1}}, None, "data.seed: unknown key"),  # a flag of `rrt corpus`, not a workflow key
    ({"early_exit": {"recipes": {"x": {"kd_weight": 1}}}}, None, "early_exit.recipes.x.weights: required key missing"),
    ({"early_exit": {"recipes": {"x": {"weights": "steep"}}}}, None,
     "early_exit.recipes.x.weights must be aggressive, uniform, linear, a number >= 0 or a list of numbers >= 0"),
    ({"base_models": {"m": {"source": "hub"}}}, None, "base_models.m.hub_id: required with source hub"),
    ({"resources": {"train": {"gpus": -1}}}, None, "resources.train.gpus must be >= 0, got -1"),
    ({"throughput": {"same_memory": "yes"}}, None, "throughput.same_memory must be true or false, got 'yes'"),
])
def test_bad_config_values_are_one_line_naming_the_key(section, value, message):
    raw = json.loads(json.dumps(MINIMAL))
    for key, part in section.items():
        raw[key] = {**raw.get(key, {}), **part} if key != "base_models" else part
    with pytest.raises(SettingError) as e:
        resolve_config(raw)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_missing_required_key_is_named():
    with pytest.raises(SettingError, match="^variants: required key missing$"):
        resolve_config({"base_models": {"m": {"source": "tiny"}}})


def test_overrides_are_text_typed_by_their_keys():
    """Snakemake's --config hands nested YAML over as strings (its BaseLoader): each is read
    as its key's type; the section's other keys stay."""
    config = resolve_config({**MINIMAL, "train": {"lr": 1e-3}}, overrides={
        "train": {"tokens": "8192", "adam_betas": ["0.8", "0.9"], "kd": {"weight": "0.7"}, "deepspeed": "null"},
        "eval": {"limit": "null", "exit_task_thresholds": {"max_prob": ["0.5"]}},
        "throughput": {"same_memory": "true"},
        "early_exit": {"recipes": {"w": {"weights": "0.3", "kd_weight": "0"}, "s": {"weights": "linear"}}}})
    assert config["train"]["tokens"] == 8192 and config["train"]["lr"] == 1e-3
    assert config["train"]["adam_betas"] == [0.8, 0.9] and config["train"]["kd"] == {
        "loss": "fkl", "weight": 0.7, "temperature": 1.0}
    assert config["eval"]["limit"] is None and config["eval"]["exit_task_thresholds"]["max_prob"] == [0.5]
    assert config["throughput"]["same_memory"] is True
    assert config["early_exit"]["recipes"] == {"w": {"weights": 0.3, "kd_weight": 0.0},
                                               "s": {"weights": "linear", "kd_weight": 1.0}}
    with pytest.raises(SettingError, match=r"^train\.kd\.weight must be in \[0, 1\], got 2\.0$"):
        resolve_config(MINIMAL, overrides={"train": {"kd": {"weight": "2"}}})


def test_settings_objects_check_themselves():
    """A settings object in hand is a valid one, however it was made."""
    with pytest.raises(ValueError, match="^lr must be a finite number > 0, got nan$"):
        TrainSettings(lr=float("nan"))
    with pytest.raises(ValueError, match="^loss must be one of fkl, rkl, jsd, tvd, got 'kl'$"):
        KDSettings(loss="kl")
    assert TrainSettings(adam_betas=(0.8, 0.9)).adam_betas == [0.8, 0.9]
    assert TrainSettings(stop_margin_s=60).stop_margin_s == 60.0


# --- the CLI -------------------------------------------------------------------------------------
def _train_args(*flags):
    return build_parser().parse_args(["train", "--model", "m", "--data", "d", "--out", "o", *flags])


def test_train_flags_are_generated_from_the_settings():
    assert settings_of(_train_args()) == TrainSettings()
    parsed = settings_of(_train_args("--max-tokens", "64", "--adam-betas", "0.8,0.95", "--kd-loss", "jsd",
                                     "--gradient-checkpointing", "--loss-chunk-tokens", "8", "--stop-margin", "60",
                                     "--exit-weights", "0.1,0.2,1", "--exit-kd-weight", "0.5"))
    assert parsed == TrainSettings(tokens=64, adam_betas=[0.8, 0.95], kd=KDSettings(loss="jsd"),
                                   gradient_checkpointing=True, loss_chunk_tokens=8, stop_margin_s=60,
                                   early_exit=ExitRecipe([0.1, 0.2, 1.0], 0.5))
    assert settings_of(_train_args("--exit-weights", "aggressive")).early_exit == ExitRecipe("aggressive", 1.0)
    assert settings_of(_train_args("--exit-weights", "0.3")).early_exit == ExitRecipe(0.3, 1.0)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = {s for a in sub._actions for s in a.option_strings}
    for path, _, meta, _ in leaves(TrainSettings):
        assert flag_name(path, meta) in flags, path


def test_train_settings_json_with_flags_over_it(tmp_path):
    """--settings takes a whole resolved train section (inline or a file); a flag given
    explicitly wins over it, a flag left out does not reset it."""
    section = resolve_config({**MINIMAL, "train": {"lr": 1e-3, "gradient_checkpointing": True}})["train"]
    section.update(tokens=256, early_exit={"weights": "aggressive", "kd_weight": 0.0})
    inline = settings_of(_train_args("--settings", json.dumps(section)))
    assert inline == TrainSettings(tokens=256, lr=1e-3, gradient_checkpointing=True,
                                   early_exit=ExitRecipe("aggressive", 0.0))
    (tmp_path / "s.json").write_text(json.dumps(section))
    assert settings_of(_train_args("--settings", str(tmp_path / "s.json"))) == inline
    over = settings_of(_train_args("--settings", json.dumps(section), "--lr", "0.01", "--no-gradient-checkpointing"))
    assert (over.lr, over.gradient_checkpointing, over.tokens) == (0.01, False, 256)


@pytest.mark.parametrize("flags, message", [
    (["--settings", '{"tokens": "many"}'], "train.tokens must be an integer >= 1, got 'many'"),
    (["--settings", '{"tokns": 5}'], "train.tokns: unknown key"),
    (["--settings", "nope.json"], "--settings: neither a JSON object nor a JSON file: 'nope.json'"),
    (["--settings", "{not json"], "--settings: not JSON"),
    (["--max-tokens", "abc"], "--max-tokens must be an integer >= 1, got 'abc'"),
    (["--exit-weights", "steep"], "--exit-weights must be aggressive, uniform, linear, a number >= 0"),
    (["--exit-kd-weight", "0.5"], "--exit-weights: required key missing"),
])
def test_bad_train_settings_are_one_line(flags, message):
    with pytest.raises(SettingError) as e:
        settings_of(_train_args(*flags))
    assert str(e.value).startswith(message), str(e.value)


# The subcommands whose settings flags come from a section: (section class, its name in
# errors, the setting flags, the other flags: paths and per-run choices that are not settings).
COMMANDS = {
    "corpus": (settings.DataSettings, "data",
               {"--source", "--seed", "--heldout-docs", "--ngram", "--hub-heldout-chars", "--slimpajama", "--redpajama",
                "--pg19"},
               {"--out"}),
    "tokenize": (settings.DataSettings, "data", {"--block-size", "--max-train-tokens", "--heldout-max-tokens"},
                 {"--corpus", "--shard-dirs", "--tokenizer", "--out", "--min-train-tokens"}),
    "eval": (settings.EvalSettings, "eval",
             {"--source", "--tasks", "--limit", "--batch-size", "--precision", "--exit-thresholds",
              "--exit-task-thresholds", "--data-cache"},
             {"--model", "--out", "--ppl", "--prompt-format", "--workdir", "--exits", "--threads"}),
    "generate": (settings.ServeSettings, "serve", {"--engine", "--max-new-tokens", "--max-batch", "--exit-kv"},
                 {"--model", "--prompts", "--out", "--exit", "--threads"}),
    "throughput": (settings.ThroughputSettings, "throughput",
                   {"--prompts", "--prompt-tokens", "--max-new-tokens", "--max-batch", "--exit-kv", "--same-memory",
                    "--no-same-memory", "--seed"},
                   {"--model", "--original", "--heldout", "--out", "--exit-thresholds", "--device", "--threads"}),
    "simulate": (settings.SimulateSettings, "throughput.simulate",
                 {"--prefix-tokens", "--new-tokens", "--max-batch", "--memory-mb", "--requests", "--seed"},
                 {"--model", "--original", "--eval", "--heldout-set", "--exit-thresholds", "--out", "--device",
                  "--threads"}),
}
REQUIRED = {"corpus": ["--out", "o"],
            "tokenize": ["--corpus", "c", "--shard-dirs", "s", "--tokenizer", "t", "--out", "o"],
            "eval": ["--model", "m", "--out", "o"], "generate": ["--model", "m", "--prompts", "p", "--out", "o"],
            "throughput": ["--model", "m", "--heldout", "h", "--out", "o"],
            "simulate": ["--model", "m", "--eval", "e", "--out", "o"]}


def _subparser(name):
    return next(a for a in build_parser()._actions if a.dest == "command").choices[name]


def _args(name, *flags):
    return build_parser().parse_args([name, *REQUIRED[name], *flags])


@pytest.mark.parametrize("name", COMMANDS)
def test_command_flags_are_generated_from_their_section(name):
    """Each setting flag is one key of the section, with the key's name (or its `flag`) and
    help; the command has exactly those, --settings and its own path/per-run flags; left
    out, they give the section's defaults."""
    cls, section, setting_flags, own = COMMANDS[name]
    by_path = {path: meta for path, _, meta, _ in leaves(cls, flags=True)}
    generated = set()
    for action in _subparser(name)._actions:
        if action.dest.startswith("setting:"):
            meta = by_path[action.dest.removeprefix("setting:")]
            assert action.option_strings[0] == flag_name(action.dest.removeprefix("setting:"), meta)
            assert action.help.startswith(meta["help"].replace("%", "%%")), action.help
            generated.update(action.option_strings)
    assert generated == setting_flags
    every = {o for a in _subparser(name)._actions for o in a.option_strings}
    assert every == setting_flags | own | {"--settings", "--debug", "-h", "--help"}
    assert section_of(_args(name), cls, section) == cls()


@pytest.mark.parametrize("name, section_json, flags, expected", [
    ("corpus", {"source": "hub", "heldout_docs": 7}, ["--heldout-docs", "9"], {"source": "hub", "heldout_docs": 9}),
    ("tokenize", {"block_size": 16, "max_train_tokens": 64}, ["--max-train-tokens", "none"],
     {"block_size": 16, "max_train_tokens": None}),
    ("eval", {"limit": 3, "tasks": ["piqa"], "exit_task_thresholds": {"max_prob": [0.5]}},
     ["--limit", "5", "--exit-task-thresholds", "entropy=1,2"],
     {"limit": 5, "tasks": ["piqa"], "exit_task_thresholds": {"max_prob": [], "entropy": [1.0, 2.0]}}),
    ("eval", {"tasks": ["piqa"]}, ["--tasks", "all"], {"tasks": list(settings.TASKS)}),
    ("eval", {"exit_thresholds": {"max_prob": [0.5]}}, ["--exit-thresholds", "none"],
     {"exit_thresholds": {"max_prob": [], "entropy": []}}),
    ("generate", {"engine": "hf", "max_batch": 3}, ["--max-batch", "4"], {"engine": "hf", "max_batch": 4}),
    ("throughput", {"prompt_tokens": [8, 8], "same_memory": True, "heldout": "wiki"},
     ["--no-same-memory", "--prompt-tokens", "4,9"], {"prompt_tokens": [4, 9], "same_memory": False}),
    ("simulate", {"requests": 5, "memory_mb": 100}, ["--memory-mb", "null"], {"requests": 5, "memory_mb": None}),
])
def test_command_settings_json_with_a_flag_over_it(tmp_path, name, section_json, flags, expected):
    """--settings takes the section (here a part of it; the rest keeps its defaults), inline
    or as a file; a flag given wins over it."""
    cls, section, _, _ = COMMANDS[name]
    (tmp_path / "s.json").write_text(json.dumps(section_json))
    for given in (json.dumps(section_json), str(tmp_path / "s.json")):
        got = section_of(_args(name, "--settings", given, *flags), cls, section).to_dict()
        assert {k: got[k] for k in expected} == expected
        assert {k: v for k, v in got.items() if k not in expected and k not in section_json} == {
            k: v for k, v in cls().to_dict().items() if k not in expected and k not in section_json}


def test_the_workflows_resolved_sections_are_settings():
    """Each command takes its whole resolved workflow section (keys it does not use included)."""
    config = resolve_config(yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    for name, (cls, section, _, _) in COMMANDS.items():
        if section == "serve":  # `rrt generate`'s, not a workflow section
            continue
        part = config
        for key in section.split("."):
            part = part[key]
        assert section_of(_args(name, "--settings", json.dumps(part)), cls, section) == cls.from_dict(part)


@pytest.mark.parametrize("name, flags, message", [
    ("corpus", ["--heldout-docs", "0"], "--heldout-docs must be >= 1, got 0"),
    ("corpus", ["--source", "web"], None),  # argparse: invalid choice
    ("tokenize", ["--block-size", "1"], "--block-size must be >= 2, got 1"),
    ("tokenize", ["--settings", '{"block_size": 1}'], "data.block_size must be >= 2, got 1"),
    ("eval", ["--limit", "many"], "--limit must be an integer >= 1, or null, got 'many'"),
    ("eval", ["--settings", '{"limt": 3}'], "eval.limt: unknown key"),
    ("eval", ["--exit-thresholds", "max_prob"], "--exit-thresholds expects KEY=VALUE with KEY in max_prob, entropy"),
    ("generate", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ("throughput", ["--prompt-tokens", "8"], "--prompt-tokens must be two integers MIN,MAX with 1 <= MIN <= MAX"),
    ("throughput", ["--settings", '{"prompt_tokens": [9, 3]}'],
     "throughput.prompt_tokens must be two integers MIN,MAX with 1 <= MIN <= MAX, got [9, 3]"),
    ("simulate", ["--new-tokens", "1"], "--new-tokens must be >= 2, got 1"),
    ("simulate", ["--settings", '{"requests": 0}'], "throughput.simulate.requests must be >= 1, got 0"),
])
def test_bad_command_setting_is_one_line_naming_the_flag(capsys, name, flags, message):
    cls, section, _, _ = COMMANDS[name]
    if message is None:
        with pytest.raises(SystemExit):
            _args(name, *flags)
        assert "invalid choice: 'web'" in capsys.readouterr().err
        return
    with pytest.raises(SettingError) as e:
        section_of(_args(name, *flags), cls, section)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["corpus", "--out", "{t}/c", "--settings", '{"ngram": 0}'], "rrt corpus: error: data.ngram must be >= 1, got 0"),
    (["tokenize", "--corpus", "{t}", "--shard-dirs", "{t}", "--tokenizer", "{t}", "--out", "{t}/o",
      "--block-size", "1"],
     "rrt tokenize: error: --block-size must be >= 2, got 1"),
    (["eval", "--model", "{t}/m", "--out", "{t}/o.json", "--exit-task-thresholds", "max_prob=0.5"],
     "rrt eval: error: --exit-thresholds and --exit-task-thresholds need --exits"),
    (["throughput", "--model", "{t}/m", "--heldout", "{t}", "--out", "{t}/o.json", "--settings", '{"seed": -1.5}'],
     "rrt throughput: error: throughput.seed must be an integer, got -1.5"),
])
def test_handlers_read_the_settings_first(tmp_path, capsys, argv, message):
    """A bad setting stops the command before it touches anything (one line, exit 2)."""
    from .conftest import cli_error

    assert cli_error(capsys, [a.replace("{t}", str(tmp_path)) for a in argv]) == message
    assert sorted(tmp_path.iterdir()) == []


def test_importing_the_cli_leaves_the_environment_alone():
    """Offline mode belongs to the Makefile and the tests: the library never sets it, so the
    paper config's hub paths can reach the hub once the variables are unset."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    code = ("import os, rrt.cli, rrt.cli.model, rrt.cli.data, rrt.cli.train, rrt.cli.eval, rrt.cli.report; "
            "print(sorted(k for k in os.environ if k.endswith('_OFFLINE')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
