"""The sharded tokenization stage of the workflow, run as a user runs it: Snakemake over a
local SlimPajama/RedPajama/PG19 mirror in the hub's layout, with N shard jobs; and a shard
job killed mid-write, after which a rerun redoes that shard only."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from rrt.data.blocks import TokenBlocks

from .test_data import write_hub_files
from .test_workflow import ENV, ROOT, SNAKEMAKE

TARGET = "results/data/tokens/tiny"


def configure(work, **data):
    config = yaml.safe_load((ROOT / ".test/config/config.yaml").read_text())
    config["variants"] = str(ROOT / ".test/config/variants.tsv")
    config["paper_reference"] = str(ROOT / "config/paper_reference.tsv")
    config["paper_throughput"] = str(ROOT / "config/paper_throughput.tsv")
    config["data"].update(data)
    (work / "test.yaml").write_text(yaml.safe_dump(config))


def snakemake_cmd(work, *args):
    return [SNAKEMAKE, *args, "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile", str(work / "test.yaml")]


def run(work, *args):
    out = subprocess.run(snakemake_cmd(work, TARGET, "--cores", "2", "-p", *args), cwd=ROOT, capture_output=True,
                         text=True, env=ENV)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


def blocks(path):
    b = TokenBlocks(path)
    return np.stack([b[i]["input_ids"].numpy() for i in range(len(b))])


# Real shard jobs through Snakemake: CI's slow stage. Fast: test_shards.py (1, 2, 4 shards
# give the same documents and batches; a corrupt .zst is one line) and the dry-run plans below.
@pytest.mark.slow
def test_local_mirror_dag_with_2_and_4_shards(tmp_path):
    """source: hub pointed at local mirrors: 2 shard jobs read the first files a budget
    needs, drop the held-out PG19 books, and give the same blocks as 4 shard jobs."""
    where, texts = write_hub_files(tmp_path / "mirror")
    work = tmp_path / "work"
    work.mkdir()
    mirror = dict(source="hub", heldout=["slimpajama", "redpajama", "pg19"], slimpajama=where.slimpajama,
                  redpajama=where.redpajama, pg19=where.pg19, tokens_per_file=240, max_train_tokens=None)
    configure(work, shards=2, **mirror)
    log = run(work)
    # 1,024 tokens (rec-stepwise's 512, then rec-stepwise-ee's 512 new ones) x 1.1 / 240 per
    # file: the first 5 of the 5 train files, by (n, chunk)
    assert "--files 5 --shard 0 --shards 2" in log
    assert sorted(p.name for p in (work / "results/data/shards/tiny").iterdir()) == ["0-of-2", "1-of-2"]
    stats = json.loads((work / TARGET / "stats.json").read_text())
    heldout_pg19 = (work / "results/data/corpus/heldout_pg19.jsonl").read_text().count("\n")
    assert stats["splits"]["train"]["files"] == 5 and stats["splits"]["train"]["dropped"] == heldout_pg19
    assert set(stats["splits"]) == {"train", "heldout_slimpajama", "heldout_redpajama", "heldout_pg19"}
    two = blocks(work / TARGET / "train")
    # the same experiment with 4 shards: 4 new shard jobs, a new gather, the same blocks

    shutil.rmtree(work / TARGET)
    configure(work, shards=4, **mirror)
    log = run(work)
    assert log.count("rule tokenize_shard:") == 4 and "rule corpus:" not in log
    assert np.array_equal(blocks(work / TARGET / "train"), two)


@pytest.mark.slow
def test_a_killed_shard_job_is_the_only_one_redone(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    configure(work, shards=2)
    shards = work / "results/data/shards/tiny"
    # one job at a time: kill the second shard job while it writes (its temporary directory
    # exists) and the first is complete
    proc = subprocess.Popen(snakemake_cmd(work, TARGET, "--cores", "1"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done, killed = None, None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        complete = [p for p in ("0-of-2", "1-of-2") if (shards / p / "manifest.json").exists()]
        writing = [p for p in ("0-of-2", "1-of-2") if (shards / f".{p}.tmp").exists()]
        if len(complete) == 1 and writing:
            os.killpg(proc.pid, signal.SIGKILL)
            done, killed = complete[0], writing[0]
            break
        time.sleep(0.01)
    proc.wait()
    assert killed, "never saw one shard complete and the other being written"
    assert not (shards / killed).exists()  # nothing that looks done
    before = (shards / done / "manifest.json").stat().st_mtime_ns
    # what a user does after a crash: release Snakemake's lock, run again
    subprocess.run(snakemake_cmd(work, "--unlock"), cwd=ROOT, env=ENV, check=True, capture_output=True)
    log = run(work)
    assert log.count("rule tokenize_shard:") == 1 and f"{killed}" in log
    assert (shards / done / "manifest.json").stat().st_mtime_ns == before  # not redone
    assert not (shards / f".{killed}.tmp").exists()
    stats = json.loads((work / TARGET / "stats.json").read_text())
    assert stats["splits"]["train"]["shards"] == 2 and stats["splits"]["train"]["files"] == 8


@pytest.mark.parametrize("slimpajama, location", [(None, "cerebras/SlimPajama-627B"),
                                                  ("/scratch/mirror/SlimPajama-627B", "/scratch/mirror/SlimPajama-627B")])
def test_paper_config_plans_its_shard_jobs(tmp_path, slimpajama, location):
    """config/paper.yaml plans data.shards tokenize jobs per base model, each reading its
    share of the files its largest budget needs (every base has a 60B-token KD row: 6,227
    files), from the hub or a mirror."""

    shutil.copytree(ROOT / "config", tmp_path / "config")
    extra = ["--config", f"data={{'slimpajama': '{slimpajama}'}}"] if slimpajama else []
    cmd = [SNAKEMAKE, "all", "-n", "-p", "--cores", "16", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
           "--configfile=" + str(ROOT / "config/paper.yaml"), *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert any(line.split() == ["tokenize_shard", "96"] for line in text.splitlines()), text[-3000:]
    shard_cmds = [line for line in text.splitlines() if "rrt tokenize-shard" in line]
    assert len(shard_cmds) == 96
    assert all(f"--location {location} --files 6227 " in c
               and "--shards 32" in c and "--processes 16" in c for c in shard_cmds), shard_cmds[:3]
    gathers = [line for line in text.splitlines() if "rrt tokenize --corpus" in line]
    assert len(gathers) == 3
    assert all("--min-train-tokens 60000000000" in g for g in gathers)
    assert all(g.count("results/data/shards/") == 32 for g in gathers)
