"""The recipe and benchmark scripts refuse bad input before any training starts, and clean up after
themselves: a stand-in ``nmt`` on PATH (it logs its arguments and plays a training, a translation, a
score) keeps each check to seconds. Each error is one line with exit code 2."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "recipes" / "classification" / "digits_rows"
ENSEMBLE = ROOT / "recipes" / "translation" / "multi30k" / "ensemble.sh"
CHOOSE = ENSEMBLE.with_name("choose.sh")
ETTH1 = ROOT / "recipes" / "generation" / "etth1_next_day" / "run.sh"
TOOLKITS = ROOT / "benchmarks" / "toolkits_side_by_side.sh"

FAKE_NMT = f"""#!{sys.executable}
# A stand-in for nmt: logs its arguments (one JSON list a line) to $FAKE_NMT_LOG, then plays the command.
import json, os, sys, time
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_NMT_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
env = os.environ.get
if args[0] == "train":
    run = args[args.index("--run-dir") + 1]
    if env("FAKE_NMT_FAIL") is not None and run.endswith(env("FAKE_NMT_FAIL")):
        time.sleep(float(env("FAKE_NMT_FAIL_AFTER", "0")))
        sys.exit(1)
    if env("FAKE_NMT_HANG"):  # a long training: its pid in FAKE_NMT_HANG/<run name>, then sleep
        (Path(env("FAKE_NMT_HANG")) / Path(run).name).write_text(str(os.getpid()))
        time.sleep(120)
    (Path(run) / "checkpoints").mkdir(parents=True, exist_ok=True)
    for step in (1, 2):
        (Path(run) / "checkpoints" / f"step-{{step}}.ckpt").touch()
elif args[0] == "translate":  # like click: every word an option and its value, a run an existing folder
    pairs = args[1:]
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if flag not in ("--run", "--checkpoint", "--beam", "--alpha", "-i", "-o"):
            sys.exit(f"Error: Got unexpected extra argument ({{flag}})")
        if flag == "--run" and not Path(value).is_dir():
            sys.exit(f"Error: no run {{value}}")
    Path(args[args.index("-o") + 1]).write_text("x\\n")
elif args[0] == "evaluate":
    print(json.dumps({{m: {{"score": 1.0, "signature": "nrefs:1"}} for m in ("bleu", "chrf")}}))
"""


def fake_nmt(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of a script run with the stand-in nmt first on PATH (and this Python next)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nmt").write_text(FAKE_NMT)
    (bin_dir / "nmt").chmod(0o755)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "FAKE_NMT_LOG": str(tmp_path / "nmt-calls.jsonl"), **env}


def nmt_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "nmt-calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# digits_rows: its own data variable, and a folder holding someone else's train/dev/test.tsv is never overwritten

def prepare(out: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DIGITS / "prepare.py"), str(out)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_digits_prepare_refuses_to_overwrite_a_users_split(tmp_path):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "train.tsv").write_text("label\trows\nmine\t1,2\n")
    done = prepare(mine, tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == (f"prepare.py: {mine}/train.tsv: exists and is not this script's output; "
                                     "name another folder (DIGITS_DATA for run.sh) or remove it")
    assert (mine / "train.tsv").read_text() == "label\trows\nmine\t1,2\n"
    assert sorted(p.name for p in mine.iterdir()) == ["train.tsv"]  # nothing written beside it


def test_digits_prepare_refuses_a_file_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("x\n")
    for out, said in ((tmp_path / "afile", f"prepare.py: {tmp_path}/afile: not a folder"),
                      (tmp_path / "afile" / "sub", f"prepare.py: {tmp_path}/afile/sub: Not a directory")):
        done = prepare(out, tmp_path)
        assert done.returncode == 2 and one_line(done.stderr).startswith(said), done.stderr
    assert (tmp_path / "afile").read_text() == "x\n"


def test_digits_prepare_reuses_its_own_folder(tmp_path):
    first = prepare(tmp_path / "d", tmp_path)
    assert first.returncode == 0, first.stderr
    written = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    assert sorted(written) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert len(written["train.tsv"].splitlines()) == 1078  # header + 1077 images
    again = prepare(tmp_path / "d", tmp_path)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == written


def test_digits_run_reads_digits_data_not_a_generic_data(tmp_path):
    """DATA (a name a shell may hold for anything) is not read; DIGITS_DATA is, and its conflict stops the run
    before training."""
    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    for folder in (theirs, mine):
        folder.mkdir()
        (folder / "train.tsv").write_text("their own\n")
    env = fake_nmt(tmp_path, DATA=str(theirs), DIGITS_DATA=str(mine), RUN_DIR=str(tmp_path / "run"))
    done = subprocess.run(["bash", str(DIGITS / "run.sh")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert one_line(done.stderr).startswith(f"prepare.py: {mine}/train.tsv: exists and is not this script's output")
    assert (theirs / "train.tsv").read_text() == (mine / "train.tsv").read_text() == "their own\n"
    assert nmt_calls(tmp_path) == []  # no training


# multi30k ensemble.sh: KEEP checked up front, a failed member stops the other, run directories with spaces

@pytest.mark.parametrize("keep", ["1", "0", "abc", "2.5", "-3"])
def test_ensemble_refuses_a_keep_that_averages_nothing_before_training(tmp_path, keep):
    env = fake_nmt(tmp_path, RUN_PREFIX=str(tmp_path / "ens"), KEEP=keep, NMT_DATA=str(tmp_path))
    done = subprocess.run(["bash", str(ENSEMBLE), "en-de"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert one_line(done.stderr) == (f"ensemble.sh: KEEP must be an integer of at least 2 (validations averaged; "
                                     f"1 keeps none to average), got '{keep}'")
    assert nmt_calls(tmp_path) == []


@pytest.mark.parametrize("failing", ["a", "b"])
def test_ensemble_stops_the_other_member_when_one_fails(tmp_path, failing):
    hang = tmp_path / "pids"
    hang.mkdir()
    env = fake_nmt(tmp_path, RUN_PREFIX=str(tmp_path / "ens"), NMT_DATA=str(tmp_path), FAKE_NMT_FAIL=f"-{failing}",
                   FAKE_NMT_FAIL_AFTER="1", FAKE_NMT_HANG=str(hang))
    other = {"a": "b", "b": "a"}[failing]
    try:
        done = subprocess.run(["bash", str(ENSEMBLE), "en-de"], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 1, done.stderr
        assert f"a member failed: see {tmp_path}/ens-*.log" in done.stderr
        pid = int((hang / f"ens-{other}").read_text())
        assert not alive(pid), f"member {other} still training after the script ended"
    finally:  # an old script leaves it running: not past this test
        for pidfile in hang.iterdir():
            if alive(int(pidfile.read_text())):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_ensemble_stops_its_members_on_ctrl_c(tmp_path):
    hang = tmp_path / "pids"
    hang.mkdir()
    env = fake_nmt(tmp_path, RUN_PREFIX=str(tmp_path / "ens"), NMT_DATA=str(tmp_path), FAKE_NMT_HANG=str(hang))
    # A CI job started in the background inherits SIGINT ignored, which bash cannot trap: give the script
    # SIGINT's default, as a terminal's foreground job has.
    script = subprocess.Popen(["bash", str(ENSEMBLE), "en-de"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 20
        while len(list(hang.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(p.read_text()) for p in hang.iterdir()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        script.send_signal(signal.SIGINT)
        script.wait(timeout=20)
        assert script.returncode == 130
        assert not [pid for pid in pids if alive(pid)], "a member kept training after Ctrl-C"
    finally:
        if script.poll() is None:
            script.kill()
        for pidfile in hang.iterdir():
            if alive(int(pidfile.read_text())):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_ensemble_run_prefix_with_spaces_and_glob_characters(tmp_path):
    prefix = tmp_path / "my runs" / "e *"
    env = fake_nmt(tmp_path, RUN_PREFIX=str(prefix), KEEP="2", NMT_DATA=str(tmp_path / "data"), ALPHAS="0.6 1.0")
    done = subprocess.run(["bash", str(ENSEMBLE), "en-de"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    calls = nmt_calls(tmp_path)
    trained = [c[c.index("--run-dir") + 1] for c in calls if c[0] == "train"]
    assert sorted(trained) == [f"{prefix}-a", f"{prefix}-b"]
    translated = [c for c in calls if c[0] == "translate"]
    assert len(translated) == 7  # six candidates, then the chosen one at alpha 1.0; the test sets are absent
    for call in translated:
        runs = [call[i + 1] for i, word in enumerate(call) if word == "--run"]
        assert runs and set(runs) <= {f"{prefix}-a", f"{prefix}-b"}, call
    # the system line can be pasted into a shell: the run directory quoted
    assert f"system: nmt translate --run '{prefix}-a'" in done.stdout


def test_choose_refuses_unbalanced_quotes(tmp_path):
    env = fake_nmt(tmp_path, PREFIX=str(tmp_path / "p"), NMT_DATA=str(tmp_path))
    done = subprocess.run(["bash", str(CHOOSE), "en-de", "a=--run 'runs/x"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert one_line(done.stderr) == "choose.sh: candidate 'a=--run 'runs/x': unbalanced quotes in its options"
    assert nmt_calls(tmp_path) == []


# etth1_next_day: BUDGET checked up front, each training half of it

@pytest.mark.parametrize("budget", ["00:05:00", "5", "abc", "00:00:05:00:00", "1:2:x:4", "-1:00:00:00"])
def test_etth1_refuses_a_malformed_budget_before_training(tmp_path, budget):
    env = fake_nmt(tmp_path, BUDGET=budget, RUN_DIR=str(tmp_path / "run"))
    done = subprocess.run(["bash", str(ETTH1)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert one_line(done.stderr) == (f"run.sh: BUDGET must be DD:HH:MM:SS (Lightning's max_time, e.g. 00:00:05:00), "
                                     f"got '{budget}'")
    assert nmt_calls(tmp_path) == []


@pytest.mark.parametrize(("budget", "half"), [("00:00:05:00", "00:00:02:30"), ("00:00:00:01", "00:00:00:01"),
                                              ("09:00:00:00", "04:12:00:00"), ("00:01:00:01", "00:00:30:00"),
                                              ("01:00:00:01", "00:12:00:00"), ("0:0:90:0", "00:00:45:00")])
def test_etth1_trains_each_model_half_the_budget(tmp_path, budget, half):
    env = fake_nmt(tmp_path, BUDGET=budget, RUN_DIR=str(tmp_path / "run"), FAKE_NMT_FAIL="generate")
    done = subprocess.run(["bash", str(ETTH1)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # the stand-in's training fails: the script stops at the first
    [train] = nmt_calls(tmp_path)
    assert f"trainer.max_time={half}" in train


# toolkits_side_by_side.sh: numbers checked up front, relative WORK and NMT_DATA from the caller's folder

@pytest.mark.parametrize(("knob", "value"), [("STEPS", "abc"), ("STEPS", "3e2"), ("ROUNDS", "x"), ("ROUNDS", "0"),
                                             ("THREADS", "two"), ("THREADS", "0")])
def test_toolkits_refuses_a_number_that_is_not_one(tmp_path, knob, value):
    env = fake_nmt(tmp_path, WORK=str(tmp_path / "work"), JOEY_PYTHON="true", **{knob: value})
    done = subprocess.run(["bash", str(TOOLKITS)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert one_line(done.stderr) == f"toolkits_side_by_side: {knob} must be a positive integer, got '{value}'"
    assert not (tmp_path / "work").exists()


def test_toolkits_reads_relative_work_from_the_callers_folder(tmp_path):
    mine = tmp_path / "side-by-side-guard-test"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    env = fake_nmt(tmp_path, WORK=mine.name, JOEY_PYTHON="true", NMT_DATA=str(tmp_path / "no-data"))
    stray = ROOT / mine.name  # where an old script would read it
    try:
        done = subprocess.run(["bash", str(TOOLKITS)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert one_line(done.stderr) == (f"toolkits_side_by_side: {mine} is not empty and was not made by this script; "
                                         "it is replaced at each call, so name another WORK")
        assert (mine / "notes.txt").read_text() == "keep me\n"
    finally:
        if (stray / ".toolkits-side-by-side").exists():
            subprocess.run(["rm", "-rf", str(stray)], check=True)


def test_toolkits_reads_relative_nmt_data_from_the_callers_folder(tmp_path):
    for split in ("train", "val"):
        for lang in ("en", "de"):
            (tmp_path / "data" / "multi30k").mkdir(parents=True, exist_ok=True)
            with gzip.open(tmp_path / "data" / "multi30k" / f"{split}.{lang}.gz", "wt") as f:
                f.write(f"{split} {lang}\n")
    # the stand-in nmt fails the first training: the script stops right after copying the data into WORK
    env = fake_nmt(tmp_path, WORK=str(tmp_path / "work"), JOEY_PYTHON="true", NMT_DATA="data",
                   FAKE_NMT_FAIL="nmt-tokenizer")
    done = subprocess.run(["bash", str(TOOLKITS)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nmt train failed" in done.stderr, done.stderr
    assert (tmp_path / "work" / "data" / "train.de").read_text() == "train de\n"
