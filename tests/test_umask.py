"""Files the pipeline writes honour the umask: on a shared filesystem collaborators read
results/ as they would any other file the user writes (atomic writes go through a temp
file and a rename, and the temp file's mode survives the rename)."""
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from rrt.io import atomic_output_dir, atomic_write_json, atomic_write_text, durable_write_json
from rrt.report.aggregate import _write


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)],
                ids=["022", "027", "077"])
def umask(request):
    mask, file_mode, dir_mode = request.param
    old = os.umask(mask)
    try:
        yield file_mode, dir_mode
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_and_tables_honour_the_umask(tmp_path, umask):
    file_mode, dir_mode = umask
    atomic_write_text(tmp_path / "a.txt", "x\n")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    durable_write_json(tmp_path / "c.json", {"x": 1})
    _write(pd.DataFrame({"variant": ["v"], "ppl_wiki": [1.5]}), tmp_path / "tables" / "summary")
    written = ["a.txt", "b.json", "c.json", "tables/summary.csv", "tables/summary.md"]
    assert {name: oct(mode(tmp_path / name)) for name in written} == {name: oct(file_mode) for name in written}
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "tables").glob(".*"))


def test_output_directories_honour_the_umask(tmp_path, umask):
    file_mode, dir_mode = umask
    with atomic_output_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}\n")
        atomic_write_json(tmp / "summary.json", {})
    assert mode(tmp_path / "model") == dir_mode
    assert mode(tmp_path / "model/config.json") == mode(tmp_path / "model/summary.json") == file_mode


def test_rewriting_keeps_one_file_and_no_temp(tmp_path):
    path = tmp_path / "t.csv"
    for text in ("a\n", "b\n"):
        atomic_write_text(path, text)
    assert path.read_text() == "b\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
