"""Data at scale: preparation time, peak memory and training throughput on 1M and 10M pairs.

    python benchmarks/data_scale.py [--sizes 1000000 10000000] [--steps 60] [--workers 2] [--workdir DIR]
    nmt bench data-scale [the same options]

Each size is a corpus generated from Multi30k en-de (pair k: the first words of a random pair a, the
rest of a random pair b, cut at the same fraction of the words on both sides), written under the
work directory: --workdir DIR, kept and its corpora reused by the next run there, or by default a
fresh temporary directory removed at the end, so that runs at the same time never collide. For each
size ``nmt prepare`` and then ``nmt train`` (--steps steps, no validation) run as child processes
under OMP_NUM_THREADS=1 in the same run directory. Measured: preparation wall time and pairs per
second (manifest's pairs_read / seconds.tokenize, and overall),
peak resident memory of each child (``ru_maxrss`` from ``wait4``, the largest process of its tree;
plus anonymous and file-backed memory of the whole tree sampled every 0.1 s: memory-mapped pages
count in RSS but the kernel can drop them), and the median ``train/tokens_per_sec`` (target
tokens) after the first logged window. Targets (issue): training memory (peak RSS) within 1.2x and
throughput at least 0.9x from the first to the last size, preparation (tokenising, two workers) at
>= 100k pairs/s. Unmet targets still exit 0; a failed child exits 1 with the end of its output.
Results go to --out (default: WORKDIR/results.json with --workdir, else none but the printed table);
the children's output to WORKDIR/logs.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nmt.bench import ScriptArguments, bounded, script_main  # noqa: E402

BASE_RECIPE = ROOT / "recipes" / "translation" / "multi30k" / "en-de.yaml"
BLOCK = 100_000  # pairs generated and written at a time
Pool = list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # per side: buffer, separators, first, words
TARGETS = {"train_rss_ratio": 1.2, "throughput_ratio": 0.9, "prepare_pairs_per_s": 100_000}
MAX_PAIRS = 20_000_000  # about 2 GB of generated text
MAX_STEPS = 100_000
MAX_WORKERS = 2 * (os.cpu_count() or 1)  # nmt prepare --workers' bound


def data_root() -> Path:
    from nmt.recipe import default_data_root

    return default_data_root()


# --- corpus ------------------------------------------------------------------------------------

def load_pool(root: Path) -> Pool:
    """Per side (en, de): all sentences as one buffer of `` w0 w1 ...\\n``, the positions of the
    separators (spaces and newlines), each sentence's first separator index and its word count."""
    sides = []
    for lang in ("en", "de"):
        with gzip.open(root / "multi30k" / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            sides.append([" ".join(line.split()) for line in f])
    keep = [i for i, pair in enumerate(zip(*sides)) if all(pair)]  # both sides non-empty
    pool = []
    for lines in sides:
        lines = [lines[i] for i in keep]
        buf = np.frombuffer("".join(f" {line}\n" for line in lines).encode("utf-8"), dtype=np.uint8)
        seps = np.flatnonzero((buf == ord(" ")) | (buf == ord("\n")))
        words = np.array([line.count(" ") + 1 for line in lines], dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(words + 1)[:-1]])
        pool.append((buf, seps, first, words))
    return pool


def gather(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> bytes:
    """The byte segments ``buf[s:s+l]`` concatenated, without a Python loop."""
    ends = np.cumsum(lengths)
    index = np.arange(int(ends[-1])) + np.repeat(starts - (ends - lengths), lengths)
    return buf[index].tobytes()


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def generate(workdir: Path, pairs: int, seed: int, pool: Pool) -> tuple[Path, float]:
    """``pairs-N/train.{en,de}`` under workdir (reused if complete); the folder and the seconds spent."""
    folder = workdir / f"pairs-{pairs}-seed{seed}"
    paths = [folder / "train.en", folder / "train.de"]
    if all(p.exists() and count_lines(p) == pairs for p in paths):
        return folder, 0.0
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_pool = len(pool[0][3])
    temps = [p.with_name(p.name + ".tmp") for p in paths]
    outs = [open(t, "wb", buffering=1 << 24) for t in temps]
    try:
        for done in range(0, pairs, BLOCK):
            n = min(BLOCK, pairs - done)
            a, b, frac = rng.integers(0, n_pool, n), rng.integers(0, n_pool, n), rng.random(n)
            for (buf, seps, first, words), out in zip(pool, outs):
                na, nb = words[a], words[b]
                cut_a = np.clip(np.rint(frac * na).astype(np.int64), 1, na)  # a's first cut_a words ...
                cut_b = np.clip(np.rint(frac * nb).astype(np.int64), 0, nb - 1)  # ... b's words from cut_b on
                s1, e1 = seps[first[a]] + 1, seps[first[a] + cut_a]
                s2, e2 = seps[first[b] + cut_b], seps[first[b] + nb] + 1  # " word ...\n"
                starts = np.stack([s1, s2], axis=1).ravel()
                out.write(gather(buf, starts, np.stack([e1 - s1, e2 - s2], axis=1).ravel()))
    finally:
        for out in outs:
            out.close()
    for temp, path in zip(temps, paths):
        temp.replace(path)
    return folder, time.perf_counter() - start


def write_recipe(workdir: Path, corpus: Path, pairs: int, root: Path) -> Path:
    """The Multi30k en-de recipe on the generated corpus: real validation set, no test sets,
    tokenizer fitted on a bounded sample of 200k lines for every size."""
    recipe = yaml.safe_load(BASE_RECIPE.read_text(encoding="utf-8"))
    recipe["name"] = f"data-scale-{pairs}"
    data = recipe["data"]
    data["root"] = str(workdir)
    data["train"] = {"src": f"{corpus.name}/train.en", "tgt": f"{corpus.name}/train.de"}
    data["valid"] = {side: str(root / "multi30k" / f"val.{lang}.gz") for side, lang in (("src", "en"), ("tgt", "de"))}
    data.pop("test", None)
    data["tokenizer"]["input_sentence_size"] = 200_000
    path = workdir / f"data-scale-{pairs}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


# --- child processes ---------------------------------------------------------------------------

@dataclass
class Child:
    seconds: float
    max_rss_mib: float  # ru_maxrss: the largest single process of the child's tree
    peak_anon_mib: float = 0.0  # sampled, the whole tree
    peak_file_mib: float = 0.0
    peak_total_mib: float = 0.0  # anon + file + shmem at the same sample


def tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat: this kernel has no /proc/PID/task/TID/children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(parents.get(found[-1], []))
    return found


def sample(pid: int, child: Child, stop: threading.Event) -> None:
    """Peak anonymous, file-backed and total resident memory of pid's tree, every 0.1 s until stop.

    Proportional (Pss_* of /proc/PID/smaps_rollup): for one process the same as RssAnon and RssFile
    of /proc/PID/status; for forked workers, pages they share with their parent are not counted twice."""
    while not stop.wait(0.1):
        kib = {b"Pss_Anon:": 0, b"Pss_File:": 0, b"Pss_Shmem:": 0}
        for p in tree(pid):
            try:
                with open(f"/proc/{p}/smaps_rollup", "rb") as f:
                    for line in f:
                        words = line.split()  # b"Pss_Anon:", b"112", b"kB"
                        if words and words[0] in kib:
                            kib[words[0]] += int(words[1])
            except (OSError, ValueError):
                continue
        child.peak_anon_mib = max(child.peak_anon_mib, kib[b"Pss_Anon:"] / 1024)
        child.peak_file_mib = max(child.peak_file_mib, kib[b"Pss_File:"] / 1024)
        child.peak_total_mib = max(child.peak_total_mib, sum(kib.values()) / 1024)


def run_nmt(args: list[str], log: Path) -> Child:
    """``nmt ARGS`` as a child process, output to log; exits 1 with the log's tail if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child, stop = Child(0.0, 0.0), threading.Event()
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nmt.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
    sampler = threading.Thread(target=sample, args=(proc.pid, child, stop), daemon=True)
    sampler.start()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: its pid stays ours
    child.seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage (its tree's largest ru_maxrss)
    proc.returncode = os.waitstatus_to_exitcode(status)
    child.max_rss_mib = usage.ru_maxrss / 1024  # KiB on Linux
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        sys.exit(f"nmt {' '.join(args[:2])} failed (exit {proc.returncode}); the end of its output:\n" + "\n".join(tail))
    return child


def tokens_per_sec(metrics: Path) -> tuple[float, int]:
    """Median of ``train/tokens_per_sec`` in metrics.csv without the first (warm-up) window; windows used."""
    with open(metrics, newline="", encoding="utf-8") as f:
        values = [float(row["train/tokens_per_sec"]) for row in csv.DictReader(f) if row.get("train/tokens_per_sec")]
    if len(values) < 2:
        sys.exit(f"{metrics}: {len(values)} train/tokens_per_sec values; raise --steps or lower --log-every")
    return statistics.median(values[1:]), len(values) - 1


@dataclass
class SizeResult:
    pairs: int
    generate_seconds: float
    prepare: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def measure(recipe: Path, run_dir: Path, pairs: int, args: argparse.Namespace, logs: Path) -> SizeResult:
    """``nmt prepare`` (unless --skip-prepare), then ``nmt train`` in the same fresh run directory."""
    result = SizeResult(pairs, 0.0)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run left there would resume past max_steps and train nothing
    manifest_path = run_dir / "corpus" / "manifest.json"
    if not args.skip_prepare:
        child = run_nmt(["prepare", str(recipe), "--run-dir", str(run_dir), "--workers", str(args.workers)],
                        logs / f"prepare-{pairs}.log")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        seconds = manifest["seconds"]
        result.prepare = {**asdict(child), "manifest": manifest,
                          "tokenize_pairs_per_s": manifest["pairs_read"] / max(seconds["tokenize"], 1e-9),
                          "overall_pairs_per_s": manifest["pairs_read"] / child.seconds}
    before = manifest_path.stat().st_mtime_ns if manifest_path.exists() else None
    child = run_nmt(["train", str(recipe), "--run-dir", str(run_dir), f"trainer.max_steps={args.steps}",
                     "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
                     f"trainer.log_every_n_steps={args.log_every}"], logs / f"train-{pairs}.log")
    after = manifest_path.stat().st_mtime_ns if manifest_path.exists() else None
    rate, windows = tokens_per_sec(run_dir / "logs" / "metrics.csv")
    result.train = {**asdict(child), "tokens_per_sec": rate, "windows": windows,
                    "corpus_reused": before is not None and before == after}
    return result


def report(results: list[SizeResult], args: argparse.Namespace) -> dict:
    """Print the table, the ratios largest/smallest size and the targets; return them for the JSON."""
    def cell(value: float | None, spec: str, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"

    print(f"data scale: {args.steps} training steps, prepare --workers {args.workers}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS=1")
    print(f"{'pairs':>10} | {'prepare s':>9} | {'tokenize pairs/s':>16} | {'prepare RSS MiB (max / all)':>27} | "
          f"{'train RSS MiB (anon / file)':>27} | {'train tokens/s':>14}")
    for r in results:
        p, t = r.prepare, r.train
        prepared = f"{p['max_rss_mib']:.0f} / {p['peak_total_mib']:.0f}" if p else "-"
        memory = f"{t['max_rss_mib']:.0f} ({t['peak_anon_mib']:.0f} / {t['peak_file_mib']:.0f})"
        print(f"{r.pairs:>10} | {cell(p.get('seconds'), '.1f', 9)} | {cell(p.get('tokenize_pairs_per_s'), ',.0f', 16)}"
              f" | {prepared:>27} | {memory:>27} | {t['tokens_per_sec']:>14,.0f}")
        if p and not t["corpus_reused"]:
            print(f"{'':>10}   nmt train prepared the corpus again: its memory and time include preparation")
    small, large = results[0], results[-1]
    ratios = {key: large.train[key] / small.train[key] for key in ("max_rss_mib", "peak_anon_mib", "tokens_per_sec")}
    if small.prepare:
        ratios["prepare_seconds"] = large.prepare["seconds"] / small.prepare["seconds"]
        ratios["prepare_max_rss_mib"] = large.prepare["max_rss_mib"] / small.prepare["max_rss_mib"]
    print(f"{large.pairs}/{small.pairs}: " + ", ".join(f"{k} x{v:.3f}" for k, v in ratios.items()))
    slowest = min((r.prepare["tokenize_pairs_per_s"] for r in results if r.prepare), default=None)
    targets = {
        "train memory <= 1.2x": (ratios["max_rss_mib"], ratios["max_rss_mib"] <= TARGETS["train_rss_ratio"]),
        "throughput within 10%": (ratios["tokens_per_sec"], ratios["tokens_per_sec"] >= TARGETS["throughput_ratio"]),
        "prepare >= 100k pairs/s": (slowest, slowest is not None and slowest >= TARGETS["prepare_pairs_per_s"]),
    }
    for name, (value, met) in targets.items():
        shown = "not measured" if value is None else f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
        print(f"  {name:<24} {shown:>14}  {'met' if met else 'NOT met'}")
    return {"ratios": ratios, "targets": {k: {"value": v, "met": m} for k, (v, m) in targets.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = ScriptArguments(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=bounded(int, 1, MAX_PAIRS), nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--steps", type=bounded(int, 2, MAX_STEPS), default=60, help="training steps per size [60]")
    parser.add_argument("--log-every", type=bounded(int, 1, MAX_STEPS), default=10,
                        help="steps per throughput window [10]")
    parser.add_argument("--workers", type=bounded(int, 1, MAX_WORKERS), default=2, help="nmt prepare --workers [2]")
    parser.add_argument("--workdir", type=Path,
                        help="where the corpora, runs and logs go, kept [default: a temporary directory, removed]")
    parser.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0, help="corpus generation seed [0]")
    parser.add_argument("--out", type=Path, help="results JSON [WORKDIR/results.json with --workdir]")
    parser.add_argument("--skip-prepare", action="store_true",
                        help="no nmt prepare: nmt train prepares the corpus itself, inside the measured process")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        return measure_all(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="nmt-data-scale-") as workdir:  # removed however it ends
        return measure_all(args, Path(workdir))


def measure_all(args: argparse.Namespace, workdir: Path) -> int:
    """Every size measured in ``workdir``; the table printed and the results written to --out."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root = data_root()
    pool, results = load_pool(root), []
    for pairs in args.sizes:
        corpus, seconds = generate(workdir, pairs, args.seed, pool)
        print(f"{pairs} pairs: {corpus} ({f'generated in {seconds:.1f} s' if seconds else 'reused'})", flush=True)
        result = measure(write_recipe(workdir, corpus, pairs, root), workdir / f"run-{pairs}", pairs, args, logs)
        result.generate_seconds = seconds
        results.append(result)
    summary = report(results, args)
    out = args.out or (workdir / "results.json" if args.workdir is not None else None)
    if out is None:
        return 0
    out.write_text(json.dumps({"command": sys.argv, "cpus": os.cpu_count(), "steps": args.steps,
                               "workers": args.workers, "sizes": [asdict(r) for r in results], **summary},
                              indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
