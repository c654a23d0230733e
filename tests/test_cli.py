"""The installed ``nmt`` console script: help for every command, the version, the plugin listing."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import nmt
from nmt.cli import cli

NMT = Path(sys.executable).parent / "nmt"
BUILTINS = [("encoder", "gru"), ("encoder", "lstm"), ("decoder", "rnn"), ("attention", "bahdanau"),
            ("attention", "luong"), ("tokenizer", "sentencepiece"), ("tokenizer", "whitespace"),
            ("tokenizer", "characters"), ("task", "seq2seq")]


def run_nmt(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(NMT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_console_script_is_installed():
    assert NMT.is_file(), f"no console script at {NMT}; install the package (pip install -e .)"


def test_help_lists_every_command():
    result = run_nmt("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: nmt [OPTIONS] COMMAND")
    for command in cli.commands:
        assert f"  {command} " in result.stdout
    assert "--plugin" in result.stdout and "--version" in result.stdout


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help_of_each_command(command):
    result = run_nmt(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: nmt {command} [OPTIONS]")
    assert cli.commands[command].help.split()[0] in result.stdout  # the docstring, not just usage
    assert result.stderr == ""


def test_short_help_option():
    assert run_nmt("train", "-h").stdout.startswith("Usage: nmt train")


def test_version():
    result = run_nmt("--version")
    assert result.returncode == 0
    assert result.stdout == f"nmt, version {nmt.__version__}\n"


def test_plugins_lists_every_builtin_with_its_origin():
    result = run_nmt("plugins")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["KIND", "NAME", "ORIGIN", "DESCRIPTION"]
    origin_column = header.index("ORIGIN")
    rows = {tuple(line.split()[:2]): line for line in lines}
    for kind, name in BUILTINS:
        assert (kind, name) in rows, f"{kind} {name} missing from:\n{result.stdout}"
        line = rows[kind, name]
        assert line[origin_column:].startswith(f"nmt {nmt.__version__} "), line
        assert len(line[origin_column:].split(None, 2)) == 3, f"no description: {line}"  # origin is two words
    assert [line.split()[:2] for line in lines] == sorted(line.split()[:2] for line in lines)


def test_no_command_shows_usage():
    result = run_nmt()
    assert "Usage: nmt" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_plugin_descriptions_are_plain_text():
    result = run_nmt("plugins")
    assert result.returncode == 0, result.stderr
    assert ":meth:" not in result.stdout and "``" not in result.stdout
    assert "projected once per batch by prepare" in result.stdout


def test_training_prints_no_lightning_noise(tmp_path):
    """No advertisement, no deprecation inside Lightning, no TPU line; nmt's own summary stays."""
    from conftest import reverse_recipe, write_recipe, write_reverse_corpus

    data = write_reverse_corpus(tmp_path / "data", n_train=200, n_dev=20)
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(data, trainer={"max_epochs": 1, "val_check_interval": 1.0}))
    result = run_nmt("train", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in ("litlogger", "TPU available", "LeafSpec", "smaller than the logging interval", "was configured so"):
        assert noise not in result.stderr, result.stderr
    assert "nmt: finished reverse" in result.stderr


# --- nmt bench: the exit code and the one-line errors of the benchmark scripts --------------------

@pytest.mark.parametrize("script_code, code", [(1, 1), (2, 2), (-9, 137)])
def test_a_benchmark_script_that_fails_fails_nmt_bench(tmp_path, monkeypatch, script_code, code):
    """serve-load exits 1 when a request is lost, any script 2 on a bad argument: nmt bench exits with
    that code (Click returns an Exit's code outside standalone mode; nmt's main must pass it on)."""
    from nmt import bench
    from nmt.cli import main

    monkeypatch.setattr(bench.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(command, script_code))
    assert main(["bench", "serve-load", "--run", str(tmp_path), "--", "--requests", "3"]) == code
    monkeypatch.setattr(bench.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(command, 0))
    assert main(["bench", "serve-load", "--run", str(tmp_path)]) == 0


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["train-speed", "{nope}", "--steps", "1"], "nmt: {nope}: recipe file not found"),
    (["train-speed", "{nope}", "--steps", "abc"], "nmt: --steps: expected an integer, got 'abc'"),
    (["train-speed", "{nope}", "--steps", "-1"], "nmt: --steps: expected at least 1, got -1"),
    (["train-speed", "{nope}", "--batch-tokens", "0"], "nmt: --batch-tokens: expected at least 1, got 0"),
    (["train-speed", "{nope}", "--steps", "1", "--device", "foo"], "nmt: --device: expected cpu, cuda or cuda:N"),
    (["train-speed", "{nope}", "--bogus"], "nmt: train_speed.py: unrecognized arguments: --bogus"),
    (["tbptt-memory", "--lengths", "x", "y"], "nmt: --lengths: expected an integer, got 'x'"),
    (["serve-load", "--run", "{tmp}", "--", "--requests", "-3"], "nmt: --requests: expected at least 1, got -3"),
])
def test_bad_arguments_of_a_benchmark_script_are_one_line_and_exit_2(tmp_path, capfd, args, message):
    """The scripts run as child processes: their one line, not a traceback or a usage block, and
    their exit code through nmt bench."""
    from nmt.cli import main

    nope = str(tmp_path / "nope.yaml")
    args = [a.format(nope=nope, tmp=tmp_path) for a in args]
    capfd.readouterr()
    code = main(["bench", *args])
    assert one_error_line(code, capfd.readouterr().err).startswith(message.format(nope=nope))


@pytest.mark.parametrize("args, message", [
    (["translate-speed", "--run", "{tmp}", "--sentences", "5", "--bogus"],
     "nmt: nmt bench translate-speed: unrecognized arguments: --bogus"),
    (["translate-speed", "--run", "{tmp}", "--sentences", "0"], "nmt: --sentences: expected at least 1, got 0"),
    (["streaming-memory", "--run", "{tmp}", "--sizes", "10"], "nmt: nmt bench streaming-memory: unrecognized arguments"),
    (["train-speed", "{tmp}/r.yaml", "--run", "{tmp}"], "nmt: --run: train-speed measures no trained run"),
    (["tbptt-memory", "--device", "cuda"], "nmt: --device: tbptt-memory takes no --device"),
])
def test_arguments_nmt_bench_would_drop_are_errors(tmp_path, capsys, args, message):
    """Arguments a benchmark does not take are an error before anything runs, never silently ignored."""
    from nmt.cli import main

    capsys.readouterr()
    code = main(["bench", *(a.format(tmp=tmp_path) for a in args)])
    assert one_error_line(code, capsys.readouterr().err).startswith(message)


def test_translate_speed_takes_its_sentences_and_beam(tmp_path, monkeypatch):
    from nmt import bench, runs

    seen = {}
    monkeypatch.setattr(runs, "check_run_info", lambda run_dir: None)
    monkeypatch.setattr(bench, "translate_speed", lambda run_dir, **options: seen.update(options))
    bench.run_benchmark("translate-speed", tmp_path, "cpu", ("--sentences", "7", "--beam", "3"))
    assert seen == {"device": "cpu", "sentences": 7, "beam": 3}


def test_data_scale_works_in_a_fresh_temporary_directory_unless_one_is_named(tmp_path, monkeypatch):
    """Two runs at once must not share a work directory: each gets its own, removed at the end;
    --workdir DIR is used and kept."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_scale.py"
    spec = importlib.util.spec_from_file_location("data_scale", path)
    data_scale = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "data_scale", data_scale)  # its dataclasses look their module up
    spec.loader.exec_module(data_scale)
    seen = []

    def generate(workdir, pairs, seed, pool):
        seen.append((workdir, workdir.is_dir()))
        return workdir / "corpus", 0.0
    monkeypatch.setattr(data_scale, "data_root", lambda: tmp_path)
    monkeypatch.setattr(data_scale, "load_pool", lambda root: None)
    monkeypatch.setattr(data_scale, "generate", generate)
    monkeypatch.setattr(data_scale, "measure", lambda recipe, run_dir, pairs, args, logs: data_scale.SizeResult(pairs, 0))
    monkeypatch.setattr(data_scale, "report", lambda results, args: {})
    assert data_scale.main(["--sizes", "1000"]) == 0
    assert data_scale.main(["--sizes", "1000"]) == 0
    (first, existed), (second, _) = seen
    assert existed and first != second and first.name.startswith("nmt-data-scale-")
    assert not first.exists() and not second.exists()
    assert data_scale.main(["--sizes", "1000", "--workdir", str(tmp_path / "work")]) == 0
    assert seen[-1][0] == tmp_path / "work" and (tmp_path / "work" / "results.json").is_file()


@pytest.mark.parametrize("number, words", [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk quota exceeded"),
                                           (errno.EFBIG, "file too large")])
def test_a_full_disk_anywhere_is_one_line_naming_the_file_and_exit_2(monkeypatch, capsys, number, words):
    """Writes outside nmt's own atomic outputs (a training's metrics.csv, through Lightning's logger) failed
    as `nmt: error: OSError: [Errno 28] ...` and exit 1, as if nmt had a bug."""
    from nmt import registry
    from nmt.cli import main

    def full(*args, **kwargs):
        raise OSError(number, os.strerror(number), "runs/x/logs/metrics.csv")

    monkeypatch.setattr(registry, "entries", full)
    assert main(["plugins"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"nmt: runs/x/logs/metrics.csv: cannot write ({words}); make room and run the command again"]


def test_a_full_disk_in_a_background_thread_is_one_warning_line(capsys):
    from nmt.cli_report import thread_failure as _thread_failure

    def writer():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/tb/events.out")

    thread = threading.Thread(target=writer, name="EventFileWriter")
    previous, threading.excepthook = threading.excepthook, _thread_failure
    try:
        thread.start()
        thread.join()
    finally:
        threading.excepthook = previous
    assert capsys.readouterr().err.splitlines() == ["nmt: warning: runs/x/tb/events.out: cannot write (disk full)"]


def test_sys_exit_in_plugin_code_is_one_line_naming_it(tmp_path, capsys):
    """Plugin code that calls sys.exit() while a command runs ended nmt with its code (0: success) and no word,
    a fresh run directory gone, a translation never written."""
    from conftest import reverse_recipe, write_recipe, write_reverse_corpus
    from nmt.cli import main

    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nimport nmt\nfrom nmt.tasks.seq2seq import Seq2SeqTask\n\n\n"
                      "@nmt.register('task', 'seq2seq_exits')\nclass Exits(Seq2SeqTask):\n"
                      "    '''Gives up at its first step.'''\n\n"
                      "    def training_step(self, batch, batch_idx):\n        sys.exit(0)\n")
    data = write_reverse_corpus(tmp_path / "data", n_train=40, n_dev=5)
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(data, task="seq2seq_exits",
                                                              trainer={"max_steps": 2}))
    capsys.readouterr()
    code = main(["--plugin", str(plugin), "train", str(recipe), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nmt: ")]
    assert code == 1 and lines == [f"nmt: error: sys.exit(0) at {plugin}:11 ended the command before it finished "
                                   "(run with --debug for the traceback)"], err


def test_plugins_with_a_name_lists_its_recipe_keys(capsys):
    """Which keys a task or component takes was in its source only (the README lists a few)."""
    from nmt.cli import main

    capsys.readouterr()
    assert main(["plugins", "gru", "forecast"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("encoder gru (") and "GRU encoder" in out[0]
    assert any(line.split() == ["hidden_size", "an", "integer,", ">", "0,", "<=", "65536;", "default", "256", "#", "per",
                                "direction"] for line in out), out
    assert any(line.startswith("task forecast (") for line in out)
    horizon = next(line for line in out if line.split()[0] == "data.horizon")
    assert "> 0, <= 10000; default 24" in horizon and "# rows forecast after the lookback window" in horizon
    assert any(line.split()[:2] == ["model.encoder", "a"] and "registered encoder" in line for line in out)
    # every built-in's keys can be listed
    from nmt import registry

    assert main(["plugins", *sorted({e.name for e in registry.entries()})]) == 0
    assert main(["plugins", "gur"]) == 2
    assert capsys.readouterr().err.strip().endswith("nmt: nmt plugins gur: no plugin of that name; did you mean 'gru'?")


def test_a_reader_that_closes_the_pipe_early_gets_no_error_line():
    """Click ends a command whose standard output was closed (nmt ... | head) with sys.exit(1): a library's own
    exit, not plugin code's, so no 'sys.exit(1) at click/core.py ended the command' line."""
    names = " ".join(["seq2seq"] * 1500)  # far more than a pipe holds
    done = subprocess.run(["bash", "-c", f"'{NMT}' plugins {names} | head -1"], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.stdout.startswith("task seq2seq") and "nmt: error" not in done.stderr, done.stderr
