"""Distributed correctness on CPU: every training example once per epoch across ranks, the whole
dev set scored, and a two-"node" run launched the way a cluster launches one (NODE_RANK, MASTER_*)."""
from __future__ import annotations

import collections
import csv
import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from reliability_support import error_lines, nmt_subprocess, stop_when

N_TRAIN, N_DEV = 300, 40

PLUGIN = textwrap.dedent("""
    '''Test plugin: seq2seq that appends "epoch id" for every training example to ids.rank<R>.txt.'''
    import os

    import nmt
    from nmt.tasks.seq2seq import Seq2SeqTask

    @nmt.register("task", "seq2seq_record_ids")
    class RecordIds(Seq2SeqTask):
        '''Like seq2seq, and records which examples each rank trains on (and its process id).'''

        def training_step(self, batch, batch_idx):
            pid = self.run_dir / f"pid.rank{self.global_rank}"
            if not pid.exists():
                pid.write_text(str(os.getpid()))
            with open(self.run_dir / f"ids.rank{self.global_rank}.txt", "a") as f:
                f.write("".join(f"{self.current_epoch} {i}\\n" for i in batch["ids"].tolist()))
            return super().training_step(batch, batch_idx)
""")


def ddp_recipe(tmp_path: Path, **trainer) -> Path:
    data = write_reverse_corpus(tmp_path / "data", n_train=N_TRAIN, n_dev=N_DEV)
    (tmp_path / "record_ids.py").write_text(PLUGIN)
    recipe = reverse_recipe(data, task="seq2seq_record_ids", plugins=["record_ids.py"],
                            model={"embedding": {"size": 16}, "encoder": {"name": "gru", "hidden_size": 16},
                                   "attention": {"name": "bahdanau"}, "decoder": {"name": "rnn", "hidden_size": 32}},
                            trainer={"max_epochs": 2, "accelerator": "cpu", "strategy": "ddp", **trainer})
    return write_recipe(tmp_path / "ddp.yaml", recipe)


def check_every_example_once_per_epoch(run_dir: Path, world_size: int, epochs: int = 2) -> None:
    per_rank = {}
    for rank in range(world_size):
        lines = (run_dir / f"ids.rank{rank}.txt").read_text().split("\n")
        per_rank[rank] = [tuple(map(int, line.split())) for line in lines if line]
    for epoch in range(epochs):
        counts = collections.Counter(i for rows in per_rank.values() for e, i in rows if e == epoch)
        assert set(counts) == set(range(N_TRAIN)), f"epoch {epoch}: missing {set(range(N_TRAIN)) - set(counts)}"
        assert set(counts.values()) == {1}, f"epoch {epoch}: repeated {[i for i, c in counts.items() if c > 1][:10]}"
        for rank, rows in per_rank.items():
            assert any(e == epoch for e, _ in rows), f"rank {rank} trained on nothing in epoch {epoch}"


def check_whole_dev_set_scored(run_dir: Path) -> None:
    rows = [r for r in csv.DictReader(open(run_dir / "logs" / "metrics.csv")) if r.get("val/sentences")]
    assert rows and {float(r["val/sentences"]) for r in rows} == {float(N_DEV)}


def test_ddp_two_processes_on_cpu(tmp_path):
    recipe = ddp_recipe(tmp_path, devices=2)
    proc = nmt_subprocess("train", recipe, "--run-dir", tmp_path / "run", cwd=tmp_path)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    check_every_example_once_per_epoch(tmp_path / "run", world_size=2)
    check_whole_dev_set_scored(tmp_path / "run")
    # Lightning's advice to reduce each logged score across ranks, which the tasks do themselves
    assert "sync_dist" not in err, err[-3000:]


@pytest.mark.parametrize("to", ["first", "second", "all"])
def test_ddp_stopped_by_sigterm_stops_every_process_once(tmp_path, to):
    """SIGTERM to the command (its first process passes it on), to one other process of the run, or to all of
    them (a scheduler's stop, Ctrl-C). Lightning 2.6.6's processes read the signal each on its own, and its
    handler broadcast from rank 0: sent to the second process, the run hung for ever, and sent to the first or
    all, now and then. Now every process stops at the same batch: last.ckpt saved, exit 143, and one line on
    the terminal they share, not one per process."""
    recipe = ddp_recipe(tmp_path, devices=2, max_epochs=200)
    run_dir = tmp_path / "run"
    proc = nmt_subprocess("train", recipe, "--run-dir", run_dir, cwd=tmp_path, start_new_session=True)

    def send(sig: int) -> None:
        if to == "all":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid if to == "first" else int((run_dir / "pid.rank1").read_text()), sig)

    # a few steps after the second process began training
    err = stop_when(proc, (run_dir / "pid.rank1").exists, settle=2, timeout=240, send=send)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = [line for line in error_lines(err) if "training stopped by SIGTERM" in line]
    assert len(stopped) == 1 and "last.ckpt holds step" in stopped[0], err[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback(tmp_path):
    """Two single-process "nodes" as a cluster scheduler would start them; both finish."""
    recipe = ddp_recipe(tmp_path, devices=1, num_nodes=2)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    nodes = [nmt_subprocess("train", recipe, "--run-dir", tmp_path / "run", cwd=tmp_path,
                            env={**env, "NODE_RANK": str(rank)}) for rank in (0, 1)]
    results = []
    try:
        for node in nodes:
            results.append(node.communicate(timeout=400))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (out, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    assert any("finished" in line for line in error_lines(results[0][1]))
    check_every_example_once_per_epoch(tmp_path / "run", world_size=2)
    check_whole_dev_set_scored(tmp_path / "run")
