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


def evaluate_files(hyp: Path, refs: list[Path], metrics: list[str], as_json: bool = False) -> dict[str, Score]:
    from nmt.data.text import read_lines

    from nmt.io import open_output

    for name in metrics:
        _metric(name)  # reject an unknown metric before reading anything
    hypotheses = read_lines(hyp)
    if not hypotheses:  # sacrebleu fails on an empty corpus with an IndexError
        raise DataError(hyp, "file is empty")
    references = []
    for ref in refs:
        lines = read_lines(ref)
        if len(lines) != len(hypotheses):
            raise DataError(ref, f"line count differs from {hyp} ({len(lines)} vs {len(hypotheses)})")
        references.append(lines)
    scores = score(hypotheses, references, metrics)
    with open_output(None) as out:  # a closed stdout is an error, not scores silently dropped
        if as_json:
            click.echo(json.dumps({k: {"score": round(v.score, 2), "signature": v.signature}
                                   for k, v in scores.items()}), file=out)
        else:
            for s in scores.values():
                click.echo(f"{s.text}\n  signature: {s.signature}", file=out)
    return scores
