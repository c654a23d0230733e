"""Translation metrics through sacrebleu, always reported with their signatures."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from nmt.errors import DataError, UserError

METRICS = ("bleu", "chrf", "ter")


@dataclass
class Score:
    metric: str
    score: float
    signature: str
    text: str  # sacrebleu's own formatted line, e.g. "BLEU = 36.2 67.1/42.0/..."


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF, TER

    factories = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
    if name not in factories:
        raise UserError("--metrics", f"unknown metric '{name}'; expected one of: {', '.join(METRICS)}")
    return factories[name]()


def score(hypotheses: list[str], references: list[list[str]], metrics=("bleu", "chrf")) -> dict[str, Score]:
    """Corpus scores of detokenised ``hypotheses`` against one or more reference streams."""
    out = {}
    for name in metrics:
        metric = _metric(name)
        result = metric.corpus_score(hypotheses, references)
        out[name] = Score(name, float(result.score), str(metric.get_signature()), str(result))
    return out


MAX_LINE_BYTES = 1 << 20  # a longer "line" is a file that is not line text (no newlines, binary), not a sentence


def read_systems(hyps: list[Path], refs: list[Path], max_line_bytes: int = MAX_LINE_BYTES
                 ) -> tuple[list[list[str]], list[list[str]]]:
    """The lines of each hypothesis file and of each reference stream, all of one length; a line over
    ``max_line_bytes`` is a :class:`DataError` naming its file and line (it is never held whole)."""
    from nmt.data.text import iter_bounded_lines

    def read_lines(path: Path) -> list[str]:
        return list(iter_bounded_lines(path, max_line_bytes, "--max-line-bytes"))

    systems = []
    for hyp in hyps:
        lines = read_lines(hyp)
        if not lines:  # sacrebleu fails on an empty corpus with an IndexError
            raise DataError(hyp, "file is empty")
        if systems and len(lines) != len(systems[0]):
            raise DataError(hyp, f"line count differs from {hyps[0]} ({len(lines)} vs {len(systems[0])})")
        systems.append(lines)
    references = []
    for ref in refs:
        lines = read_lines(ref)
        if len(lines) != len(systems[0]):
            raise DataError(ref, f"line count differs from {hyps[0]} ({len(lines)} vs {len(systems[0])})")
        references.append(lines)
    return systems, references


def evaluate_files(hyp: Path, refs: list[Path], metrics: list[str], as_json: bool = False,
                   max_line_bytes: int = MAX_LINE_BYTES) -> dict[str, Score]:
    from nmt.io import open_output

    for name in metrics:
        _metric(name)  # reject an unknown metric before reading anything
    [hypotheses], references = read_systems([hyp], refs, max_line_bytes)
    scores = score(hypotheses, references, metrics)
    with open_output(None) as out:  # a closed stdout is an error, not scores silently dropped
        if as_json:
            click.echo(json.dumps({k: {"score": round(v.score, 2), "signature": v.signature}
                                   for k, v in scores.items()}), file=out)
        else:
            for s in scores.values():
                click.echo(f"{s.text}\n  signature: {s.signature}", file=out)
    return scores


PAIRED_TESTS = {"bs": "paired bootstrap resampling", "ar": "paired approximate randomization"}
DEFAULT_SAMPLES = {"bs": 1000, "ar": 10000}  # sacrebleu's, for samples=0
# Bootstrap resampling holds every sample's statistics of every line at once: about 43 bytes a sample-line
# for BLEU and 78 for chrF (/usr/bin/time on 1,000 lines at 1,000 and 10,000 samples: 0.10 and 0.53 GB
# for BLEU, 0.13 and 0.84 for chrF). 50M sample-lines is at most about 4 GB; --samples 1000000 on a
# 1,000-line test set asked for 40 to 72 GB. Approximate randomization permutes a sample at a time.
MAX_BOOTSTRAP_CELLS = 50_000_000


@dataclass
class Comparison:
    """One system's corpus score in a paired test: with bootstrap resampling its mean and 95%
    confidence interval over the resamples; for every system but the baseline, its p-value."""

    hyp: str
    score: float
    mean: float | None
    ci: float | None
    p_value: float | None

    def json(self) -> dict:
        return {"hyp": self.hyp, "score": round(self.score, 2), "p_value": self.p_value,
                "mean": None if self.mean is None else round(float(self.mean), 2),
                "ci": None if self.ci is None else round(float(self.ci), 2)}


def compare_files(hyps: list[Path], refs: list[Path], metrics: list[str], test: str = "bs", samples: int = 0,
                  as_json: bool = False, max_line_bytes: int = MAX_LINE_BYTES) -> dict[str, tuple[str, list[Comparison]]]:
    """Compare each of ``hyps`` with the first (the baseline) by sacrebleu's paired test (``bs``:
    bootstrap resampling, ``ar``: approximate randomization; ``samples`` 0 takes sacrebleu's default,
    1,000 and 10,000) and print, per metric, every system's score and p-value and the signature.
    The p-value is how often a difference this large arises by chance (Koehn 2004; Riezler and
    Maxwell 2005), so a dev or test gain can be told from noise. Seeded (``SACREBLEU_SEED``, default
    12345), so a run repeats. Returns {metric: (signature, comparisons in ``hyps`` order)}."""
    from sacrebleu.significance import PairedTest

    from nmt.io import open_output, same_file

    if len(hyps) < 2:
        raise UserError("--paired", "compares systems: give two or more --hyp (the first is the baseline)")
    if any(Path(a).resolve() == Path(b).resolve() or same_file(a, b)  # through any link, hard links too
           for i, a in enumerate(hyps) for b in hyps[i + 1:]):
        raise UserError("--hyp", "the same file is given twice")
    named = {name: _metric(name) for name in metrics}  # an unknown metric fails before anything is read
    systems, references = read_systems(hyps, refs, max_line_bytes)
    asked = samples or DEFAULT_SAMPLES[test]
    if test == "bs" and asked * len(references[0]) > MAX_BOOTSTRAP_CELLS:
        most = max(1, MAX_BOOTSTRAP_CELLS // len(references[0]))
        raise UserError("--samples", f"{asked:,} bootstrap samples of {len(references[0]):,} lines would hold "
                                     f"{asked * len(references[0]):,} sample-lines at once, more than "
                                     f"{MAX_BOOTSTRAP_CELLS:,} (gigabytes); use at most {most:,} or --paired ar")
    signatures, results = PairedTest([(str(h), lines) for h, lines in zip(hyps, systems)], named, references,
                                     test_type=test, n_samples=samples)()
    columns = [key for key in results if key != "System"]  # sacrebleu's own names (BLEU, chrF2, TER), in order
    compared = {name: (str(signatures[column]),
                       [Comparison(str(h), r.score, r.mean, r.ci, r.p_value) for h, r in zip(hyps, results[column])])
                for name, column in zip(named, columns)}  # named: each metric once, as sacrebleu's columns
    with open_output(None) as out:
        if as_json:
            click.echo(json.dumps({"test": test, "baseline": str(hyps[0]),
                                   **{name: {"signature": sig, "systems": [c.json() for c in rows]}
                                      for name, (sig, rows) in compared.items()}}), file=out)
            return compared
        click.echo(f"{PAIRED_TESTS[test]}; the baseline is {hyps[0]}", file=out)
        width = max(len(str(h)) for h in hyps)
        for name, (signature, rows) in compared.items():
            for c in rows:
                spread = "" if c.mean is None else f"  (mean {c.mean:.2f}, 95% CI ± {c.ci:.2f})"
                verdict = "baseline" if c.p_value is None else f"p = {c.p_value:.4f}"
                click.echo(f"{name:<5} {c.hyp:<{width}}  {c.score:6.2f}{spread}  {verdict}", file=out)
            click.echo(f"  signature: {signature}", file=out)
    return compared
