"""The documentation (README.md, docs/*.md) against the code: every `rrt` subcommand and
flag it names exists, every subcommand is documented, and the command lines it shows in
```bash blocks run as written and do what the text says, from a shell that has NOT
activated the virtual environment (the venv's programs called by their path, as the docs
do). Long commands run as dry runs (`-n`) in a temporary copy of the repository. Lines
marked with a comment in MARKERS cannot run here (they need SLURM, a GPU or a finished
run); they are skipped, each with its reason."""
import argparse
import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
MARKERS = ("cluster only", "GPU only", "after a run")
TOOLS = ("make", "snakemake", ".venv/bin/snakemake", "rrt", ".venv/bin/rrt")
SLURM_FLAGS = {"--signal"}  # sbatch's, named in docs/cluster.md


# --- reading the docs ---------------------------------------------------------------------
def fenced_blocks(text: str):
    """(info string, body) of every ``` block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def inline_spans(text: str):
    return re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def logical_lines(body: str):
    """Lines with their backslash continuations joined."""
    return [line.strip() for line in re.sub(r"\\\n\s*", " ", body).splitlines() if line.strip()]


def without_comment(line: str) -> tuple[str, str]:
    """(command, comment) for a shell line: the comment starts at a `#` after whitespace."""
    match = re.search(r"\s#\s?(.*)$", line)
    return (line[:match.start()].strip(), match.group(1)) if match else (line, "")


def code_snippets():
    """Every piece of code the docs show: fenced lines (comments dropped) and inline spans."""
    for path in DOCS:
        text = path.read_text()
        for _, body in fenced_blocks(text):
            for line in logical_lines(body):
                yield path.name, without_comment(line)[0]
        for span in inline_spans(text):
            yield path.name, " ".join(span.split())


RRT_CALL = re.compile(r"(?:^|[\s`(\[|;])(?:\.venv/bin/)?rrt +([a-z][a-z0-9-]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def rrt_calls():
    """(doc, subcommand, flags named after it) for every `rrt <subcommand>` in the code."""
    for doc, snippet in code_snippets():
        calls = list(RRT_CALL.finditer(snippet))
        for i, call in enumerate(calls):
            end = calls[i + 1].start() if i + 1 < len(calls) else len(snippet)
            yield doc, call.group(1), FLAG.findall(snippet[call.end():end])


def subcommands() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def other_tools_flags() -> set[str]:
    """Flags of the other programs the docs name: Snakemake, the bench scripts, lm-eval."""
    from snakemake.cli import get_argument_parser

    flags = {o for a in get_argument_parser()._actions for o in a.option_strings}
    for script in (ROOT / "bench").glob("*.py"):
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", script.read_text()))
    import lm_eval

    for source in (Path(lm_eval.__file__).parent / "_cli").glob("*.py"):  # its argparse declarations
        flags |= set(re.findall(r"\"(--[a-z][a-z0-9_-]*)\"", source.read_text()))
    return flags | SLURM_FLAGS


def test_every_rrt_subcommand_and_flag_in_the_docs_exists():
    known = subcommands()
    wrong = [f"{doc}: rrt {sub}" + (f" {flag}" if flag else "")
             for doc, sub, flags in rrt_calls()
             for flag in ([None] if sub not in known else [f for f in flags if f not in known[sub]])]
    assert not wrong, "named in the docs but not in the parser:\n" + "\n".join(sorted(set(wrong)))


def test_every_rrt_subcommand_is_documented():
    documented = {sub for _, sub, _ in rrt_calls()}
    assert set(subcommands()) <= documented, sorted(set(subcommands()) - documented)


def test_every_other_flag_in_the_docs_exists():
    """A lone `--flag` in the text (not in an rrt command line) is a flag of rrt, Snakemake,
    a bench script or lm-eval."""
    known = set().union(*subcommands().values()) | other_tools_flags()
    lone = {(doc, flag) for doc, snippet in code_snippets() if re.fullmatch(r"--[a-z][\w-]*(=\S+| \S+)?", snippet)
            for flag in FLAG.findall(snippet)}
    assert not sorted(f"{doc}: {flag}" for doc, flag in lone if flag not in known)


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_resolve():
    """Every relative link names a file that exists, and its #anchor a heading there."""
    anchors = {}
    for path in DOCS:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
        anchors[path.resolve()] = {heading_anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"\w+://", target):
                continue
            name, _, anchor = target.partition("#")
            linked = (path.parent / name).resolve() if name else path.resolve()
            if not linked.exists() or (anchor and linked in anchors and anchor not in anchors[linked]):
                broken.append(f"{path.name}: {target}")
    assert not broken, broken


# --- running the documented commands ------------------------------------------------------
def shell_commands():
    """(doc, command, marker) for each `make`/`snakemake`/`rrt` line of a ```bash block."""
    found = []
    for path in DOCS:
        for info, body in fenced_blocks(path.read_text()):
            if info not in ("bash", "sh", "shell"):
                continue
            for line in logical_lines(body):
                command, comment = without_comment(line)
                if command and not command.startswith("#") and shlex.split(command)[0] in TOOLS:
                    marker = next((m for m in MARKERS if comment.startswith(m)), None)
                    found.append((path.name, command, marker))
    return found


COMMANDS = shell_commands()

# What the docs say these do, checked on the dry run: the jobs planned (rule: count) and
# which variants they are for. "done": in a copy whose every output is present and up to
# date (as after `make run`); "fresh": in a copy with no results.
EXPECT = {
    "make rerun VARIANT=rec-average": ("done", {"uptrain": 1, "evaluate": 1}, {"rec-average"}),
    "make rerun VARIANT=rec-average STEP=evaluate": ("done", {"evaluate": 1}, {"rec-average"}),
    "make rerun VARIANT=rec-stepwise-ee SNAKEMAKE_ARGS=-n":
        ("done", {"uptrain": 1, "evaluate": 1, "throughput": 1, "simulate": 1}, {"rec-stepwise-ee"}),
    ".venv/bin/snakemake --cores 2 results/eval/rec-average.json":
        ("fresh", {"base_model": 1, "corpus": 1, "tokenize_shard": 1, "tokenize": 1, "convert": 1, "uptrain": 1,
                   "evaluate": 1}, {"rec-average"}),
    ".venv/bin/snakemake --cores 2 results/eval/rec-average.json --forcerun uptrain":
        ("done", {"uptrain": 1, "evaluate": 1}, {"rec-average"}),
    ".venv/bin/snakemake --cores 2 --forcerun=uptrain results/eval/rec-average.json":
        ("done", {"uptrain": 1, "evaluate": 1}, {"rec-average"}),
    ".venv/bin/snakemake --cores 2 --forcerun uptrain -- results/eval/rec-average.json":
        ("done", {"uptrain": 1, "evaluate": 1}, {"rec-average"}),
    ".venv/bin/snakemake --cores 2 all": ("done", {}, set()),  # after `make run`: nothing to do
    ".venv/bin/snakemake --profile slurm -n all": ("fresh", {"uptrain": 96, "evaluate": 99}, None),
    ".venv/bin/snakemake --cores 2 -n all --config train='{tokens: 8192}'": ("fresh", {"uptrain": 15}, None),
    # docs/healing.md: the longer CPU run, four rows
    ".venv/bin/snakemake --cores 2 all --configfile=config/healing.yaml":
        ("fresh", {"base_model": 1, "convert": 2, "uptrain": 3, "evaluate": 4, "aggregate": 1}, None),
}
# Run for real, not planned: a job that calls `rrt`, so it shows that the rules find it
# without the venv on PATH; run under umask 022, so its table must come out 0644.
RUN_FOR_REAL = ".venv/bin/snakemake --cores 1 results/tables/plan.csv --configfile=config/paper.yaml"
# The README's rerun lines and the real run are in the default selection; the rest is slow.
FAST = {RUN_FOR_REAL, "make rerun VARIANT=rec-stepwise-ee SNAKEMAKE_ARGS=-n",
        ".venv/bin/snakemake --cores 2 results/eval/rec-average.json --forcerun uptrain", "make test"}
# What `make run` and `make test` do, read from `make -n` (running them is the whole pipeline
# and the whole suite); `make -n run` also plans the report, which needs a finished run.
MAKE_PLAN = {"make run": "snakemake --cores 2 all", "make test": "pytest -q"}
EXPECT["make run"] = ("done", None, None)


def test_the_expected_commands_are_still_in_the_docs():
    shown = {command for _, command, _ in COMMANDS}
    assert not (set(EXPECT) | FAST) - shown, sorted((set(EXPECT) | FAST) - shown)


def test_lines_that_cannot_run_here_are_marked():
    """A command that submits to SLURM (a profile run that is not a dry run) must say so."""
    for _, command, marker in COMMANDS:
        words = shlex.split(command)
        if "slurm" in command and "-n" not in words and "--dry-run" not in words:
            assert marker == "cluster only", command


def plain_shell_env() -> dict:
    """The environment of a shell that has not activated the venv: its bin is not on PATH."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(PATH=os.pathsep.join(path) or "/usr/bin:/bin", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    assert shutil.which("rrt", path=env["PATH"]) is None, "rrt is on PATH outside the venv: the test proves nothing"
    return env


def repo_copy(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "reports", ".snakemake", "__pycache__", ".pytest_cache", "*.egg-info", "exported"))
    (dest / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the docs call .venv/bin/...
    return dest


def run(command: list[str], cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=plain_shell_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.umask(umask))


def planned(text: str) -> tuple[dict[str, int], set[str]]:
    """A dry run's job table (rule: count, without `all`) and the variants of its jobs."""
    table = re.search(r"^job\s+count\n(.*?)^total", text, flags=re.M | re.S)
    jobs = {} if table is None else {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table.group(1), re.M)}
    jobs.pop("all", None)
    return jobs, set(re.findall(r"wildcards: .*?\bvariant=([^,\s]+)", text))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return repo_copy(tmp_path_factory.mktemp("docs") / "fresh")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A copy in which every output of `all` is present and up to date, as after `make run`
    (created empty, all with one time stamp: Snakemake only compares times and existence)."""
    repo = repo_copy(tmp_path_factory.mktemp("docs") / "done")
    out = run([".venv/bin/snakemake", "--cores", "1", "-n", "all"], repo)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    outputs = {p.strip() for line in re.findall(r"^\s+output: (.*)$", out.stdout + out.stderr, flags=re.M)
               for p in line.split(",")}
    stamp = time.time()  # newer than every source file of the copy
    for name in sorted(outputs):
        path = repo / name
        if re.search(r"\.(json|csv|md|png|tsv|html)$", name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:  # a directory() output: models, data stores
            path.mkdir(parents=True, exist_ok=True)
    for name in outputs:
        os.utime(repo / name, (stamp, stamp))
    return repo


def as_dry_run(command: str) -> list[str]:
    """The command as written, planned but not run: `make -n` for run/test, the rerun helper
    with SNAKEMAKE_ARGS=-n, snakemake with -n right after the program (before any option that
    takes several values)."""
    words = shlex.split(command)
    if command in MAKE_PLAN:
        return ["make", "-n", *words[1:]]
    if words[:2] == ["make", "rerun"]:
        return words if any(w.startswith("SNAKEMAKE_ARGS=") for w in words) else [*words, "SNAKEMAKE_ARGS=-n"]
    if words[0].endswith("snakemake") and "-n" not in words:
        return [words[0], "-n", *words[1:]]
    return words


@pytest.mark.parametrize("doc,command,marker", [
    pytest.param(*c, id=c[1], marks=() if c[1] in FAST else pytest.mark.slow) for c in COMMANDS])
def test_documented_command_runs_as_written(doc, command, marker, request):
    if marker:
        pytest.skip(f"{doc}: marked '{marker}'")
    state, jobs, variants = EXPECT.get(command, ("fresh", None, None))
    repo = request.getfixturevalue(state)
    out = run(shlex.split(command) if command == RUN_FOR_REAL else as_dry_run(command), repo)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{doc}: {command}\n{text[-3000:]}"
    if command in MAKE_PLAN:
        assert MAKE_PLAN[command] in text, text[-2000:]
    if command == RUN_FOR_REAL:
        plan = repo / "results/tables/plan.csv"
        assert "gemma-relaxed-r64," in plan.read_text() and stat.S_IMODE(plan.stat().st_mode) == 0o644
    if jobs is not None:
        planned_jobs, planned_variants = planned(text)
        if variants is not None:  # exactly these jobs, for exactly these variants
            assert (planned_jobs, planned_variants) == (jobs, variants), f"{command}\n{text[-3000:]}"
        else:
            assert {rule: planned_jobs.get(rule) for rule in jobs} == jobs, f"{command}\n{text[-3000:]}"


@pytest.mark.slow
def test_the_swallowed_target_form_plans_everything(done):
    """Why the docs put targets first: with the target after --forcerun, Snakemake takes it as
    a second value of --forcerun and plans `all` (every uptraining)."""
    out = run([".venv/bin/snakemake", "-n", "--cores", "2", "--forcerun", "uptrain", "results/eval/rec-average.json"],
              done)
    jobs, _ = planned(out.stdout + out.stderr)
    assert out.returncode == 0 and jobs["uptrain"] == 15


def load_rerun_script():
    spec = importlib.util.spec_from_file_location("rerun", ROOT / "workflow/scripts/rerun.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rerun_forces_the_steps_file_and_names_bad_input(monkeypatch):
    """`make rerun`'s arguments: the variant's own outputs as targets (before --forcerun),
    the chosen step's file forced; bad input is one line naming the variant or step."""
    monkeypatch.chdir(ROOT)
    rerun_args = load_rerun_script().rerun_args
    assert rerun_args("rec-stepwise-ee", "uptrain", "config/config.yaml") == [
        "results/eval/rec-stepwise-ee.json", "results/throughput/rec-stepwise-ee.json",
        "results/simulate/rec-stepwise-ee.json", "--forcerun", "results/train/rec-stepwise-ee/final"]
    assert rerun_args("rec-average", "convert", "config/config.yaml") == [
        "results/eval/rec-average.json", "--forcerun", "results/models/init/rec-average"]
    assert rerun_args("full-original", "evaluate", "config/config.yaml")[-2:] == [
        "--forcerun", "results/eval/full-original.json"]
    assert rerun_args("gemma-relaxed-r64", "uptrain", "config/paper.yaml")[-1] == "results/train/gemma-relaxed-r64/final"
    for name, step, message in (("nope", "uptrain", "unknown VARIANT 'nope'"),
                                ("full-original", "uptrain", "'full-original' is not uptrained"),
                                ("rec-stepwise-ee", "convert", "has no conversion"),
                                ("rec-average", "train", "unknown STEP 'train'")):
        with pytest.raises(SystemExit, match=message):
            rerun_args(name, step, "config/config.yaml")


def test_make_rerun_without_a_variant_prints_its_usage(fresh):
    out = run(["make", "rerun"], fresh)
    assert out.returncode == 2 and "usage: make rerun VARIANT=<name>" in out.stderr, out.stderr
