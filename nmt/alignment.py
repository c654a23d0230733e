"""Attention as alignment: hard alignments in Pharaoh format and heatmaps of the weights.

The weights come from the search (``attention=True``): one row per target piece, EOS included when
the hypothesis ended with it, one column per source piece. ``nmt translate --alignments`` prints
:func:`pharaoh` of them after each translation, ``--plot-attention DIR`` draws :func:`plot_attention`.
"""
from __future__ import annotations

from pathlib import Path

from nmt.io import atomic_open

EOS_PIECE = "</s>"
CELL_PX = 30  # one source piece wide, one target piece high
DPI = 100
# room for the piece labels (left: target, bottom: source, turned upright) and a little air
LEFT_PX, BOTTOM_PX, RIGHT_PX, TOP_PX = 110, 110, 20, 20
LABEL_CHARS = 12  # longer pieces are cut in the labels, so the margins always hold them


def hard_alignment(attention: list[list[float]], target_pieces: int) -> list[tuple[int, int]]:
    """(source index, target index) pairs: for each of the first ``target_pieces`` rows (EOS left out),
    the source piece it attended to most."""
    return [(max(range(len(row)), key=row.__getitem__), j) for j, row in enumerate(attention[:target_pieces])]


def pharaoh(attention: list[list[float]] | None, target_pieces: int) -> str:
    """``i-j`` pairs (source piece i, target piece j, 0-based) as fast_align writes them; "" without weights."""
    if not attention:
        return ""
    return " ".join(f"{i}-{j}" for i, j in hard_alignment(attention, target_pieces))


def figure_pixels(source_pieces: int, target_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of the heatmap of ``target_rows`` x ``source_pieces`` weights."""
    return LEFT_PX + RIGHT_PX + CELL_PX * source_pieces, BOTTOM_PX + TOP_PX + CELL_PX * target_rows


def _label(piece: str) -> str:
    return piece if len(piece) <= LABEL_CHARS else piece[: LABEL_CHARS - 1] + "…"


def plot_attention(path: Path, attention: list[list[float]], source: list[str], target: list[str]) -> Path:
    """Write a PNG heatmap of ``attention`` [len(target), len(source)] to ``path`` (atomically): source
    pieces along the bottom, target pieces (EOS as ``</s>``) down the side, darker is more weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(attention), len(source)
    if rows != len(target) or any(len(row) != cols for row in attention):
        raise ValueError(f"attention of {rows} rows for {len(target)} target and {cols} source pieces")
    width, height = figure_pixels(cols, rows)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    # the axes in figure fractions: the cells fill exactly CELL_PX each
    ax = fig.add_axes((LEFT_PX / width, BOTTOM_PX / height, cols * CELL_PX / width, rows * CELL_PX / height))
    ax.imshow(attention, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")  # [T,S]
    ax.set_xticks(range(cols), [_label(p) for p in source], rotation=90, fontsize=8)
    ax.set_yticks(range(rows), [_label(p) for p in target], fontsize=8)
    ax.tick_params(length=0)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    plt.close(fig)
    return path
