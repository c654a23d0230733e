"""benchmarks/toolkits_side_by_side.sh replaces its WORK folder at each call: a folder it did not make
(a user's) is refused before anything is removed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "toolkits_side_by_side.sh"


def test_a_work_folder_the_script_did_not_make_is_left_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    # `true` passes for a toolkit's python, and no data is there: a run that went on would stop right after replacing WORK
    env = {**os.environ, "WORK": str(mine), "JOEY_PYTHON": shutil.which("true"), "NMT_DATA": str(tmp_path / "no-data")}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "is not empty and was not made by this script" in done.stderr
    assert (mine / "notes.txt").read_text() == "keep me\n"
    # a folder the script made (its mark) is replaced
    (mine / ".toolkits-side-by-side").touch()
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and not (mine / "notes.txt").exists()
