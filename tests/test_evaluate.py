"""``nmt evaluate``: sacrebleu scores with signatures, and with several ``--hyp`` a paired test.

The paired test must compare each system with the first, in the order given, report the baseline's
own corpus score, and tell a real improvement (p < 0.05) from a change that does nothing measurable.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from reliability_support import error_lines, run_cli  # noqa: E402

from nmt.metrics import score  # noqa: E402

WORDS = [f"w{i}" for i in range(60)]


def noisy(lines: list[str], rate: float, seed: int) -> list[str]:
    """Each word replaced by a random one with probability ``rate``."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) if rng.random() < rate else w for w in line.split()) for line in lines]


@pytest.fixture
def systems(tmp_path, monkeypatch) -> dict[str, list[str]]:
    """ref.txt, and three systems: base (30% of words wrong), better (10%), same (base, 5 lines changed)."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    ref = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(300)]
    base = noisy(ref, 0.3, 1)
    texts = {"ref": ref, "base": base, "better": noisy(ref, 0.1, 2),
             "same": base[:5] + noisy(ref[5:10], 0.3, 3) + base[10:]}
    for name, lines in texts.items():
        Path(f"{name}.txt").write_text("\n".join(lines) + "\n")
    return texts


def test_paired_bootstrap_tells_an_improvement_from_noise(systems, capsys):
    code, out, err = run_cli(capsys, "evaluate", "--hyp", "base.txt", "--hyp", "better.txt", "--hyp", "same.txt",
                             "--ref", "ref.txt", "--metrics", "bleu,chrf", "--samples", "300", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["test"] == "bs" and result["baseline"] == "base.txt"
    for name in ("bleu", "chrf"):
        rows = result[name]["systems"]
        assert [r["hyp"] for r in rows] == ["base.txt", "better.txt", "same.txt"]  # the order given
        assert "bs:300" in result[name]["signature"]
        expected = score(systems["base"], [systems["ref"]], (name,))[name].score
        assert rows[0]["score"] == round(expected, 2) and rows[0]["p_value"] is None
        assert rows[1]["score"] > rows[0]["score"] and rows[1]["p_value"] < 0.05
        assert rows[2]["p_value"] > 0.05
        assert all(r["ci"] > 0 for r in rows)
    # text: one line per metric and system, then the signature
    code, out, _ = run_cli(capsys, "evaluate", "--hyp", "base.txt", "--hyp", "better.txt", "--ref", "ref.txt",
                           "--metrics", "bleu", "--samples", "300")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "paired bootstrap resampling; the baseline is base.txt"
    assert re.fullmatch(r"bleu  base.txt    +\d+\.\d\d  \(mean \d+\.\d\d, 95% CI ± \d\.\d\d\)  baseline", lines[1])
    assert re.fullmatch(r"bleu  better.txt  +\d+\.\d\d  \(mean .*\)  p = 0\.\d{4}", lines[2])
    assert lines[3].startswith("  signature: nrefs:1|bs:300|seed:12345|")


def test_a_metric_named_twice_is_scored_once_under_its_own_name(systems, capsys):
    """With several --hyp, "bleu,bleu,chrf" labelled chrF's scores as bleu and dropped chrF."""
    code, out, err = run_cli(capsys, "evaluate", "--hyp", "base.txt", "--hyp", "better.txt", "--ref", "ref.txt",
                             "--metrics", "bleu,bleu,chrf", "--samples", "100", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [key for key in result if key not in ("test", "baseline")] == ["bleu", "chrf"]
    for name in ("bleu", "chrf"):
        expected = score(systems["base"], [systems["ref"]], (name,))[name].score
        assert result[name]["systems"][0]["score"] == round(expected, 2), (name, result[name])


def test_approximate_randomization(systems, capsys):
    code, out, err = run_cli(capsys, "evaluate", "--hyp", "base.txt", "--hyp", "better.txt", "--ref", "ref.txt",
                             "--metrics", "bleu", "--paired", "ar", "--samples", "500", "--json")
    assert code == 0, err
    rows = json.loads(out)["bleu"]["systems"]
    assert rows[1]["p_value"] < 0.05 and rows[1]["ci"] is None
    assert "ar:500" in json.loads(out)["bleu"]["signature"]


@pytest.mark.parametrize("argv, message", [
    (["--hyp", "base.txt", "--paired", "bs"], "nmt: --paired: compares systems: give two or more --hyp"),
    (["--hyp", "base.txt", "--samples", "10"], "nmt: --samples: counts the resamples of a paired test"),
    (["--hyp", "base.txt", "--hyp", "./base.txt"], "nmt: --hyp: the same file is given twice"),
    (["--hyp", "base.txt", "--hyp", "hard-link.txt"], "nmt: --hyp: the same file is given twice"),
    (["--hyp", "base.txt", "--hyp", "short.txt"], "nmt: short.txt: line count differs from base.txt (2 vs 300)"),
    (["--hyp", "base.txt", "--hyp", "better.txt", "--metrics", "bleu,meteor"], "nmt: --metrics: unknown metric"),
    (["--hyp", "base.txt", "--metrics", ","], "nmt: --metrics: expected one or more of bleu, chrf, ter"),
    (["--hyp", "base.txt", "--metrics", " ", "--json"], "nmt: --metrics: expected one or more of bleu, chrf, ter"),
    (["--hyp", "base.txt", "--hyp", "better.txt", "--metrics", ""], "nmt: --metrics: expected one or more"),
    (["--hyp", "base.txt", "--hyp", "better.txt", "--samples", "200000"],  # 300 lines: 60M sample-lines, gigabytes
     "nmt: --samples: 200,000 bootstrap samples of 300 lines would hold 60,000,000 sample-lines at once, more than "
     "50,000,000 (gigabytes); use at most 166,666 or --paired ar"),
])
def test_bad_comparisons_are_one_line(systems, capsys, argv, message):
    Path("short.txt").write_text("a\nb\n")
    if not Path("hard-link.txt").exists():
        os.link("base.txt", "hard-link.txt")
    code, out, err = run_cli(capsys, "evaluate", *argv, "--ref", "ref.txt")
    assert code == 2 and out == ""
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(message), err


def test_one_hypothesis_keeps_its_output(systems, capsys):
    code, out, err = run_cli(capsys, "evaluate", "--hyp", "base.txt", "--ref", "ref.txt", "--metrics", "bleu", "--json")
    assert code == 0, err
    assert json.loads(out)["bleu"]["score"] == round(score(systems["base"], [systems["ref"]], ("bleu",))["bleu"].score, 2)


def test_a_hypothesis_without_line_ends_is_refused_not_read_forever(tmp_path):
    """`nmt evaluate --hyp /dev/zero` skipped the rest of its first line block by block, for ever: the readers
    that refuse a long line (evaluate, score, rerank) now stop reading at it."""
    (tmp_path / "ref.txt").write_text("a\n")
    done = subprocess.run([sys.executable, "-m", "nmt.cli", "evaluate", "--hyp", "/dev/zero", "--ref", "ref.txt"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["nmt: /dev/zero:1: line is longer than 1048576 bytes; raise --max-line-bytes "
                                        "to read it"]


def test_a_dash_hypothesis_is_standard_input(tmp_path):
    """`sacrebleu ref < hyp` habits: nmt evaluate --hyp - read a file named '-' ("file not found")."""
    ref = tmp_path / "ref.txt"
    ref.write_text("the cat sat on the mat\na dog ran in the park\n")
    argv = [sys.executable, "-m", "nmt.cli", "evaluate", "--ref", str(ref), "--metrics", "bleu", "--json"]
    piped = subprocess.run([*argv, "--hyp", "-"], input=ref.read_text(), capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["bleu"]["score"] == 100.0
