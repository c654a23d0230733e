"""``nmt bench``: measurements printed next to the command that produced them.

``streaming-memory``: ``nmt translate`` runs as a child process on a small and a ten times larger
input; the peak resident memory of each child (``ru_maxrss`` from ``wait4``) shows whether memory
stays flat as the input grows, and probe sentences at known line numbers show that output line i
still answers input line i. ``benchmarks/streaming_memory.py`` is the same with more options.

``translate-speed``: see :func:`translate_speed`.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from nmt.errors import UserError
from nmt.options import within

PROBE_EVERY = 997  # probe A at lines 0, 997, ...; probe B half way between


@dataclass
class StreamingResult:
    lines: int
    peak_rss_mib: float
    seconds: float
    order_ok: bool
    detail: str = ""


SCRIPT_BENCHMARKS = {"train-speed": "train_speed.py", "tbptt-memory": "tbptt_memory.py", "serve-load": "serve_load.py",
                     "data-scale": "data_scale.py"}
RUN_SCRIPTS = {"serve-load"}  # scripts that measure a run: nmt bench's --run and --device go to them
DEVICE_SCRIPTS = {"train-speed"}  # scripts that take nmt bench's --device, where it is given (no "auto")
MAX_SENTENCES = 100_000  # translate-speed decodes them three times in one process
MAX_BEAM = 100  # nmt translate's own bound


def run_benchmark(what: str, run_dir: Path | None = None, device: str = "auto", args: tuple[str, ...] = (),
                  **options) -> object:
    """Entry point of ``nmt bench WHAT``; returns the measurements it printed."""
    if what in RUN_SCRIPTS:
        if run_dir is None:
            raise UserError("--run", f"{what} needs a run directory to measure (train one with nmt train)")
        args = ("--run", str(run_dir), "--device", device, *args)
    elif what in SCRIPT_BENCHMARKS:  # nmt bench's own options are never dropped without a word
        if run_dir is not None:
            raise UserError("--run", f"{what} measures no trained run")
        if device != "auto":
            if what not in DEVICE_SCRIPTS:
                raise UserError("--device", f"{what} takes no --device")
            args = ("--device", device, *args)
    if what in SCRIPT_BENCHMARKS:
        return run_script(SCRIPT_BENCHMARKS[what], args)
    benchmarks = {"streaming-memory": streaming_memory, "translate-speed": translate_speed}
    if what not in benchmarks:
        raise UserError("nmt bench", f"unknown benchmark {what!r} (one of {', '.join([*benchmarks, *SCRIPT_BENCHMARKS])})")
    options = {**options, **in_process_options(what, args)}  # before the run is looked at: a typo fails fast
    if run_dir is None:
        raise UserError("--run", f"{what} needs a run directory to measure (train one with nmt train)")
    from nmt.runs import check_run_info

    check_run_info(run_dir)
    return benchmarks[what](Path(run_dir), device=device, **options)


def in_process_options(what: str, args: tuple[str, ...]) -> dict:
    """The ARGS of a benchmark that runs in this process: translate-speed's --sentences and --beam;
    streaming-memory takes none (benchmarks/streaming_memory.py has more options). Anything else is
    an error, never silently ignored."""
    parser = ScriptArguments(prog=f"nmt bench {what}", add_help=False)
    if what == "translate-speed":
        parser.add_argument("--sentences", type=bounded(int, 1, MAX_SENTENCES), default=300)
        parser.add_argument("--beam", type=bounded(int, 1, MAX_BEAM), default=5)
    return vars(parser.parse_args(list(args)))


class ScriptArguments(argparse.ArgumentParser):
    """argparse for nmt bench and the benchmark scripts: a bad argument raises a :class:`UserError`
    (``nmt: --steps: expected at least 1, got -1`` through :func:`script_main` or
    the CLI) instead of printing a usage block; unknown arguments are an error too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, exit_on_error=False, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as exc:  # a value of the wrong type or out of bounds
            raise UserError(exc.argument_name or self.prog, exc.message) from None

    def error(self, message: str):  # argparse's own: unrecognized or missing arguments
        raise UserError(self.prog, message)


def bounded(kind: type, low: float, high: float):
    """An argparse type: a finite ``kind`` (int or float) within [low, high], refused in the words of the
    commands' own options (:func:`nmt.options.within`)."""
    def convert(text: str):
        try:
            return within(kind, text, low, high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = kind.__name__
    return convert


def script_main(main, argv: list[str] | None = None) -> int:
    """Run a benchmark script's ``main``: a :class:`UserError` is one line, ``nmt: WHERE: what``, and
    its exit code (2), as every nmt command gives; ``main``'s own result is the exit code otherwise."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"nmt: {exc.message}", file=sys.stderr)
        return exc.exit_code


def run_script(name: str, args: tuple[str, ...]) -> int:
    """Benchmarks that build their own models live as scripts in the checkout's ``benchmarks/``."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / name
    if not script.exists():
        raise UserError(script, "benchmark script not found: nmt bench runs it from a source checkout")
    code = subprocess.run([sys.executable, str(script), *args], check=False).returncode
    if code:  # a bad argument (2) or a failed measurement (serve-load: a request lost) fails nmt bench too;
        raise click.exceptions.Exit(code if code > 0 else 128 - code)  # the script printed why; -N: killed by signal N
    return code


def translate_speed(run_dir: Path, device: str = "auto", sentences: int = 300, beam: int = 5, **options):
    """Sentences per second: batched beam search against the same beam one sentence at a time, and greedy.

    All three decode the same sentences (built from the run's vocabulary) in one process."""
    import torch

    from nmt.runs import load_run
    from nmt.translate import translate_lines

    task = load_run(run_dir, device=device)
    pool, _, _ = probe_sentences(run_dir)
    lines = [pool[i % len(pool)] for i in range(sentences)]
    variants = {
        f"beam {beam}, batched": dict(lines=[lines], beam=beam),
        f"beam {beam}, one at a time": dict(lines=[[line] for line in lines], beam=beam),
        "greedy, batched": dict(lines=[lines], beam=1),
    }
    rates = {}
    with torch.inference_mode():
        translate_lines(task, lines[:8], beam, 1, 0.6, 4000, 2.0)  # warm-up
        for name, v in variants.items():
            start = time.perf_counter()
            for chunk in v["lines"]:
                translate_lines(task, chunk, v["beam"], 1, 0.6, 4000, 2.0)
            rates[name] = sentences / (time.perf_counter() - start)
    device_name = next(task.parameters()).device
    click.echo(f"nmt bench translate-speed --run {run_dir}: {sentences} sentences on {device_name} "
               f"({torch.get_num_threads()} threads)")
    reference = rates[f"beam {beam}, one at a time"]
    for name, rate in rates.items():
        click.echo(f"  {name:<24} {rate:8.1f} sentences/s   x{rate / reference:.2f}")
    return rates


# --- streaming memory --------------------------------------------------------------------------

def probe_sentences(run_dir: Path) -> tuple[list[str], str, str]:
    """Source-side sentences built from the run's own vocabulary, and two distinct probes."""
    from nmt.runs import load_run_recipe
    from nmt.tasks.tokenizers import load_tokenizers

    recipe = load_run_recipe(run_dir)
    src_tok, _ = load_tokenizers(recipe, run_dir, joint=getattr(recipe.data, "joint_vocab", True))
    special = {getattr(src_tok, name, None) for name in ("pad_id", "bos_id", "eos_id", "unk_id")}
    ids = [i for i in range(len(src_tok)) if i not in special]
    rng = random.Random(0)
    pool = []
    for _ in range(500):
        text = src_tok.decode(rng.choices(ids, k=rng.randint(2, 8))).strip()
        if text:
            pool.append(text)
    if len(pool) < 2:
        raise UserError(run_dir, "cannot build benchmark sentences from this run's vocabulary")
    probe_a, probe_b = pool[0], next(s for s in pool if s != pool[0])
    return pool, probe_a, probe_b


def write_input(path: Path, n_lines: int, pool: list[str], probe_a: str, probe_b: str) -> None:
    rng = random.Random(n_lines)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_lines):
            if i % PROBE_EVERY == 0:
                f.write(probe_a + "\n")
            elif i % PROBE_EVERY == PROBE_EVERY // 2:
                f.write(probe_b + "\n")
            else:
                f.write(rng.choice(pool) + "\n")


def check_order(output: Path, n_lines: int) -> tuple[bool, str]:
    """Line count, and every probe's output equal to the others of its kind and unlike the other kind."""
    lines = output.read_text(encoding="utf-8").split("\n")[:-1]
    if len(lines) != n_lines:
        return False, f"{len(lines)} output lines for {n_lines} input lines"
    a = {lines[i] for i in range(0, n_lines, PROBE_EVERY)}
    b = {lines[i] for i in range(PROBE_EVERY // 2, n_lines, PROBE_EVERY)}
    if len(a) != 1 or len(b) != 1 or a == b:
        return False, f"probe outputs differ by position: {sorted(a)[:3]} / {sorted(b)[:3]}"
    return True, f"{n_lines} lines; probes at {len(range(0, n_lines, PROBE_EVERY))} positions match"


def measure_translate(run_dir: Path, input_path: Path, output_path: Path, beam: int, device: str) -> tuple[float, float]:
    """(peak RSS of the ``nmt translate`` child in MiB, wall seconds)."""
    command = [sys.executable, "-m", "nmt.cli", "translate", "--run", str(run_dir), "-i", str(input_path),
               "-o", str(output_path), "--beam", str(beam), "--device", device]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's maximum
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"nmt translate failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def streaming_memory(run_dir: Path, device: str = "auto", sizes: tuple[int, ...] = (10_000, 100_000),
                     beam: int = 1, tolerance: float = 0.20, echo=click.echo) -> list[StreamingResult]:
    """Peak memory of ``nmt translate`` for each input size; flat if within ``tolerance`` of the smallest."""
    pool, probe_a, probe_b = probe_sentences(run_dir)
    results = []
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        for n in sizes:
            src, out = Path(tmp) / f"in.{n}.txt", Path(tmp) / f"out.{n}.txt"
            write_input(src, n, pool, probe_a, probe_b)
            rss, seconds = measure_translate(run_dir, src, out, beam, device)
            ok, detail = check_order(out, n)
            results.append(StreamingResult(n, rss, seconds, ok, detail))
            src.unlink()
            out.unlink()
    base = results[0].peak_rss_mib
    echo(f"nmt bench streaming-memory --run {run_dir} (beam {beam}, device {device})")
    echo(f"{'lines':>9}  {'peak RSS MiB':>12}  {'vs first':>8}  {'seconds':>8}  order")
    for r in results:
        echo(f"{r.lines:>9}  {r.peak_rss_mib:>12.1f}  {r.peak_rss_mib / base:>8.3f}  {r.seconds:>8.1f}  "
             f"{'ok' if r.order_ok else 'WRONG'} ({r.detail})")
    worst = max(r.peak_rss_mib for r in results) / min(r.peak_rss_mib for r in results)
    verdict = "flat" if worst <= 1 + tolerance else "NOT flat"
    echo(f"largest / smallest peak: {worst:.3f} ({verdict}: tolerance {tolerance:.0%})")
    return results
