"""Outputs never damage anything: not the input, not a device node or a link, not a file's mode.

Every writer of nmt goes through ``nmt.io`` (translate -o, predict -o, the run directory's files,
checkpoints); the command-line writers are tested through the CLI, the others through the helper.
Devices are made with ``mknod`` in the test's own directory (skipped where that is not allowed), so
a regression replaces a test file, never the machine's ``/dev/null``.
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reliability_support import (NMT, check, classify_run, error_lines, record, reliability_data,  # noqa: F401
                                 run_cli, trained_run)
from nmt.cli import main
from nmt.io import atomic_open, atomic_write_text
from nmt.lightning_fixes import AtomicCheckpointIO

PREVIOUS = "an earlier translation, which must survive\n"
SOURCE = "ab cd ef\nef gh\n"


@pytest.fixture
def workdir(tmp_path, monkeypatch, trained_run):
    shutil.copytree(trained_run, tmp_path / "run")
    (tmp_path / "in.txt").write_text(SOURCE)
    (tmp_path / "out.txt").write_text(PREVIOUS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_device(path: Path, minor: int) -> Path:
    """A character device node like /dev/null (minor 3) or /dev/full (minor 7), in the test directory."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc})")
    return path


# --- the output is the input ------------------------------------------------------------------

@pytest.mark.parametrize("through", ["same name", "symlink", "hard link"])
def test_translate_refuses_to_overwrite_its_input(workdir, capsys, through):
    output = {"same name": "in.txt", "symlink": "link.txt", "hard link": "hard.txt"}[through]
    if through == "symlink":
        os.symlink("in.txt", workdir / "link.txt")
    elif through == "hard link":
        os.link(workdir / "in.txt", workdir / "hard.txt")
    argv = ["translate", "--run", "run", "-i", "in.txt", "-o", output, "--beam", "1", "--device", "cpu"]
    message = check(capsys, f"output is the input ({through})", *argv)
    assert message == f"nmt: {output}: is the input file in.txt; write the output to another file"
    assert (workdir / "in.txt").read_text() == SOURCE


def test_translate_refuses_an_output_that_is_standard_input(workdir):
    argv = ["translate", "--run", "run", "-o", "in.txt", "--beam", "1", "--device", "cpu"]
    with open(workdir / "in.txt", "rb") as stdin:
        proc = subprocess.run([*NMT, *argv], stdin=stdin, capture_output=True, text=True, timeout=300)
    message = record("output is the file on standard input", argv + ["< in.txt"], proc.returncode, proc.stderr)
    assert proc.returncode == 2 and message == "nmt: in.txt: is the file on standard input; write the output to another file"
    assert (workdir / "in.txt").read_text() == SOURCE


def test_predict_refuses_to_overwrite_its_input(classify_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a a a a a a\nb\n")
    code, out, err = run_cli(capsys, "predict", "--run", classify_run, "-i", tmp_path / "in.txt",
                             "-o", tmp_path / "in.txt", "--device", "cpu")
    assert code == 2 and "is the input file" in err
    assert (tmp_path / "in.txt").read_text() == "a a a a a a\nb\n"


# --- targets that are not regular files are written through -----------------------------------

def test_translate_writes_through_a_device_and_keeps_it(workdir, capsys):
    null = make_device(workdir / "null", 3)
    check(capsys, "output to a device such as /dev/null (written through, kept)", "translate", "--run", "run",
          "-i", "in.txt", "-o", "null", "--beam", "1", "--device", "cpu", expect=0)
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")] == []


def test_predict_writes_through_a_device_and_keeps_it(classify_run, tmp_path, capsys):
    null = make_device(tmp_path / "null", 3)
    (tmp_path / "in.txt").write_text("a a a a a a\nb\n")
    code, out, err = run_cli(capsys, "predict", "--run", classify_run, "-i", tmp_path / "in.txt", "-o", null,
                             "--device", "cpu")
    assert code == 0, err
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_full_device_is_an_error_and_stays_a_device(workdir, capsys):
    full = make_device(workdir / "full", 7)
    message = check(capsys, "output to a full device such as /dev/full", "translate", "--run", "run", "-i", "in.txt",
                    "-o", "full", "--beam", "1", "--device", "cpu")
    assert message == "nmt: full: cannot write output (disk full)"
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_fifo_is_written_through(workdir):
    fifo = workdir / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()  # blocks in open() until nmt opens the FIFO for writing
    proc = subprocess.run([*NMT, "translate", "--run", "run", "-i", "in.txt", "-o", "pipe", "--beam", "1",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    reader.join(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert received and len(received[0].splitlines()) == 2


def test_dev_stdout_goes_to_standard_output(workdir):
    proc = subprocess.run([*NMT, "translate", "--run", "run", "-i", "in.txt", "-o", "/dev/stdout", "--beam", "1",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


@pytest.mark.parametrize("command", ["translate", "predict"])
def test_a_dash_is_standard_input_and_output(workdir, classify_run, command):
    """-i - and -o - are standard input and output (the Unix convention), not files named '-'."""
    run = "run" if command == "translate" else classify_run
    argv = [*NMT, command, "--run", run, "--device", "cpu", *(["--beam", "1"] if command == "translate" else [])]
    from_file = subprocess.run([*argv, "-i", "in.txt"], capture_output=True, text=True, timeout=300)
    dashes = subprocess.run([*argv, "-i", "-", "-o", "-"], input=SOURCE, capture_output=True, text=True, timeout=300)
    assert from_file.returncode == 0 and dashes.returncode == 0, dashes.stderr
    assert dashes.stdout == from_file.stdout and len(dashes.stdout.splitlines()) == 2
    assert not (workdir / "-").exists()


def test_symlink_is_kept_and_its_file_replaced(workdir, capsys):
    (workdir / "results").mkdir()
    (workdir / "results" / "real.txt").write_text(PREVIOUS)
    os.symlink("results/real.txt", workdir / "latest.txt")
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "-o", "latest.txt", "--beam", "1",
                             "--device", "cpu")
    assert code == 0, err
    assert os.path.islink(workdir / "latest.txt")
    assert len((workdir / "results" / "real.txt").read_text().splitlines()) == 2
    assert [p.name for p in (workdir / "results").iterdir()] == ["real.txt"]


# --- modes, names, interruptions ---------------------------------------------------------------

def test_new_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x\n")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o644


def test_a_replaced_file_keeps_its_mode(workdir, capsys):
    os.chmod(workdir / "out.txt", 0o640)
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "-o", "out.txt", "--beam", "1",
                             "--device", "cpu")
    assert code == 0, err
    assert stat.S_IMODE(os.stat(workdir / "out.txt").st_mode) == 0o640


def test_checkpoints_and_run_files_share_the_helper(tmp_path):
    """The run directory's writers (recipe, run.json, labels, scalers through atomic_write_text;
    checkpoints through AtomicCheckpointIO) get the same link and mode handling."""
    (tmp_path / "keep").mkdir()
    os.symlink("keep/last.ckpt", tmp_path / "last.ckpt")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert os.path.islink(tmp_path / "last.ckpt") and (tmp_path / "keep" / "last.ckpt").stat().st_size > 0
    null = make_device(tmp_path / "null", 3)
    atomic_write_text(null, "recipe: x\n")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_output_name_too_long(workdir, capsys):
    name = "o" * 300 + ".txt"
    message = check(capsys, "output name longer than the file system allows", "translate", "--run", "run",
                    "-i", "in.txt", "-o", name, "--beam", "1", "--device", "cpu")
    assert message.endswith("cannot write output (file name too long)")


def test_longest_allowed_name_still_gets_a_temporary_name(workdir, capsys):
    name = "o" * 251 + ".txt"  # 255 bytes: the temporary name must be shorter than ".NAME.PID.xxx.tmp"
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "-o", name, "--beam", "1",
                             "--device", "cpu")
    assert code == 0, err
    assert len((workdir / name).read_text().splitlines()) == 2


def test_sigterm_while_writing_leaves_no_temporary_and_the_old_output(workdir):
    (workdir / "big.txt").write_text("ab cd ef gh ab cd\n" * 200_000)
    proc = subprocess.Popen([*NMT, "translate", "--run", "run", "-i", "big.txt", "-o", "out.txt", "--beam", "1",
                             "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]:
        assert proc.poll() is None and time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    record("SIGTERM while writing the output", ["translate", "--run", "run", "-i", "big.txt", "-o", "out.txt",
                                                "(SIGTERM)"], code, proc.stderr.read())
    assert code == 128 + signal.SIGTERM
    assert (workdir / "out.txt").read_text() == PREVIOUS
    assert [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")] == []


def test_temporaries_of_a_killed_process_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".out.txt.{dead.pid}.abc123.tmp"
    stale.write_text("half")
    live = tmp_path / f".out.txt.{os.getppid()}.abc123.tmp"  # a running process's write is left alone
    live.write_text("half")
    with atomic_open(tmp_path / "out.txt") as f:
        f.write("whole\n")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "out.txt").read_text() == "whole\n"


def test_nbest_gives_every_line_exactly_n_entries(workdir, capsys):
    """Scripts read N entries per input line: an empty line gets N (empty) entries, not one."""
    (workdir / "in.txt").write_text("ab cd ef\n\nef gh\n")
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "--beam", "3", "--nbest", "3",
                             "--device", "cpu")
    assert code == 0, err
    ids = [line.split(" ||| ")[0] for line in out.splitlines()]
    assert ids == ["0"] * 3 + ["1"] * 3 + ["2"] * 3
    assert all(line.split(" ||| ")[1] == "" for line in out.splitlines()[3:6])


def answers_while_stdin_is_open(argv: list[str], lines: list[str]) -> list[str]:
    """Interactive use: ``nmt ARGV`` answers each line while its standard input is still open."""
    proc = subprocess.Popen([*NMT, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    answers: list[str] = []
    reader = threading.Thread(target=lambda: answers.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        for n, line in enumerate(lines, start=1):
            proc.stdin.write(line)
            proc.stdin.flush()
            deadline = time.monotonic() + 120
            while len(answers) < n:  # stdin stays open: a chunked reader would wait for more lines
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, f"no answer to line {n} while standard input stays open"
                time.sleep(0.05)
    finally:
        proc.stdin.close()
        if proc.poll() is None and len(answers) < len(lines):
            proc.kill()
    assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    return answers


def test_a_pipe_gets_each_translation_as_soon_as_its_line_is_read(workdir):
    answers = answers_while_stdin_is_open(["translate", "--run", "run", "--beam", "1", "--device", "cpu"],
                                          ["ab cd ef\n", "ef gh\n"])
    assert len(answers) == 2


def test_a_pipe_gets_each_prediction_as_soon_as_its_line_is_read(classify_run):
    answers = answers_while_stdin_is_open(["predict", "--run", str(classify_run), "--device", "cpu"],
                                          ["a ab a\n", "ab\n"])
    assert [a.strip() in ("long", "short") for a in answers] == [True, True]
