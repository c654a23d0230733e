"""Load test of ``nmt serve`` on loopback: N requests from C concurrent clients, none may be lost.

    python benchmarks/serve_load.py --run DIR [--requests 500] [--clients 32] [--beam 5] [--device auto] [--compile]
    nmt bench serve-load --run DIR [--requests 500] [--clients 32] ...

Starts ``nmt serve`` as a child process on a free port of 127.0.0.1 (loopback only: nothing else is
ever addressed), waits for /health, sends exactly --requests requests (1 to 3 sentences each, built
from the run's vocabulary) from --clients concurrent clients, then stops the server. Bounded in count
and in time (--timeout): it always ends by itself.

Checks that every request was answered 200 with one translation per sentence, and that equal
sentences got equal translations whatever batch they shared (a mix-up between the requests of one
batch would show). Prints throughput, p50/p99 latency and the server's batch counters; exits 1 if
any request was lost or wrong.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from nmt.bench import MAX_BEAM, ScriptArguments, bounded, probe_sentences, script_main
from nmt.runs import check_run_info

WARM_UP = 8  # requests sent before timing: the first searches pay for lazy initialisation
MAX_REQUESTS, MAX_CLIENTS = 100_000, 1000
MAX_TIMEOUT = 24 * 3600.0  # seconds


def start_server(run_dir: Path, device: str, timeout: float, compile_step: bool = False) -> tuple[subprocess.Popen, str]:
    """``nmt serve`` on a free loopback port, and its URL once the model is loaded (and compiled)."""
    command = [sys.executable, "-m", "nmt.cli", "serve", "--run", str(run_dir), "--host", "127.0.0.1",
               "--port", "0", "--device", device, *(["--compile"] if compile_step else [])]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []

    def read_until_serving() -> None:  # "nmt: serving RUN on http://...", after "compiling ..." with --compile
        for line in proc.stderr:
            lines.append(line)
            if " on http://" in line:
                return

    reader = threading.Thread(target=read_until_serving, daemon=True)
    reader.start()
    reader.join(timeout)
    match = re.search(r"on (http://127\.0\.0\.1:\d+)/", lines[-1]) if lines else None
    if not match:
        proc.kill()
        raise SystemExit(f"serve_load: nmt serve did not start: {(lines or ['(no output)'])[-1].strip()}")
    # keep draining stderr so a chatty server never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, match.group(1)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, int(-(-p * len(sorted_values) // 100)))
    return sorted_values[rank - 1]


async def load(url: str, bodies: list[dict], clients: int, timeout: float) -> tuple[list, float, dict]:
    """(per request: (status, latency s, translations or None); wall seconds; the server's counters for
    the timed part), every body sent once by ``clients`` workers that each take the next until none is left."""
    results: list = [None] * len(bodies)
    next_index = iter(range(len(bodies)))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in next_index:  # one shared iterator: each body is sent exactly once
            start = time.perf_counter()
            try:
                response = await client.post("/translate", json=bodies[i])
                translations = ([t["translation"] for t in response.json()["translations"]]
                                if response.status_code == 200 else None)
                results[i] = (response.status_code, time.perf_counter() - start, translations)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                results[i] = (f"{type(exc).__name__}", time.perf_counter() - start, None)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        for body in bodies[:WARM_UP]:
            await client.post("/translate", json=body)
        before = (await client.get("/health")).json()["stats"]
        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*[worker(client) for _ in range(clients)]), timeout)
        except asyncio.TimeoutError:
            pass  # the requests not answered by then count as lost
        seconds = time.perf_counter() - start
        after = (await client.get("/health")).json()
    stats = {k: after["stats"][k] - before[k] for k in ("requests", "batches")}
    stats["largest"], stats["device"] = after["stats"]["largest_batch_requests"], after["device"]
    return results, seconds, stats


def main(argv: list[str] | None = None) -> int:
    parser = ScriptArguments(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="A translation run directory.")
    parser.add_argument("--requests", type=bounded(int, 1, MAX_REQUESTS), default=500)
    parser.add_argument("--clients", type=bounded(int, 1, MAX_CLIENTS), default=32)
    parser.add_argument("--beam", type=bounded(int, 1, MAX_BEAM), default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timeout", type=bounded(float, 1.0, MAX_TIMEOUT), default=300.0,
                        help="Seconds for the whole load, at most.")
    parser.add_argument("--compile", action="store_true", help="Serve with nmt serve --compile (compiled before the load).")
    args = parser.parse_args(argv)
    check_run_info(args.run)  # a UserError: one line and exit 2 (script_main)
    pool, _, _ = probe_sentences(args.run)
    rng = random.Random(0)
    bodies = [{"sentences": rng.sample(pool[:50], rng.randint(1, 3)), "beam": args.beam}
              for _ in range(args.requests)]

    proc, url = start_server(args.run, args.device, timeout=600 if args.compile else 120, compile_step=args.compile)
    try:
        results, seconds, stats = asyncio.run(load(url, bodies, args.clients, args.timeout))
    finally:
        stop_server(proc)

    answered = [(b, r) for b, r in zip(bodies, results)
                if r is not None and r[0] == 200 and len(r[2]) == len(b["sentences"])]
    seen: dict[str, set[str]] = {}
    for body, (_, _, translations) in answered:
        for sentence, translation in zip(body["sentences"], translations):
            seen.setdefault(sentence, set()).add(translation)
    mixed = sorted(s for s, outs in seen.items() if len(outs) > 1)
    failures = [r[0] if r else "no answer" for r in results if r is None or r[0] != 200]
    latencies = sorted(r[1] for _, r in answered)
    sentences = sum(len(b["sentences"]) for b, _ in answered)

    print(f"nmt bench serve-load --run {args.run}: {args.requests} requests ({sum(len(b['sentences']) for b in bodies)} "
          f"sentences) from {args.clients} concurrent clients, beam {args.beam}, server on {stats['device']}")
    print(f"  answered     {len(answered)} / {args.requests} ({args.requests - len(answered)} lost or failed"
          f"{': ' + ', '.join(sorted(set(map(str, failures)))) if failures else ''})")
    if latencies:
        print(f"  throughput   {len(answered) / seconds:.1f} requests/s, {sentences / seconds:.1f} sentences/s "
              f"({seconds:.2f} s)")
        print(f"  latency      p50 {percentile(latencies, 50) * 1000:.1f} ms   p99 {percentile(latencies, 99) * 1000:.1f} ms   "
              f"max {latencies[-1] * 1000:.1f} ms")
    print(f"  server       {stats['batches']} model batches for {stats['requests']} requests "
          f"({stats['requests'] / max(stats['batches'], 1):.1f} requests per batch; largest {stats['largest']})")
    print(f"  consistency  {len(seen)} distinct sentences, {len(mixed)} with differing translations")
    ok = len(answered) == args.requests and not mixed
    print("  result       OK: no request lost" if ok else "  result       FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(script_main(main))
