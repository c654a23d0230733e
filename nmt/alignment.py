"""Attention as alignment: hard alignments in Pharaoh format and heatmaps of the weights.

The weights come from the search (``attention=True``): one row per target piece, EOS included when
the hypothesis ended with it, one column per source piece. ``nmt translate --alignments`` prints
:func:`pharaoh` of them after each translation, ``--plot-attention DIR`` draws :func:`plot_attention`.
"""
from __future__ import annotations

from pathlib import Path

from nmt.io import atomic_open

EOS_PIECE = "</s>"
CELL_PX = 30  # one source piece wide, one target piece high, while the grid fits in GRID_MAX_PX
# The grid of cells is at most this many pixels a side: a longer side shrinks its cells instead.
# matplotlib holds ~100 bytes a pixel of an image while drawing it, so this bounds the memory of any
# heatmap (~150 MB) and its time (about a second), however long the line (before: 30 px a piece,
# 8.7 GB and 32 s for a line of 320 pieces).
GRID_MAX_PX = 1200
LABEL_MIN_PX = 12  # a cell smaller than this along an axis cannot hold its 8-point labels: indices instead
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


def grid_pixels(pieces: int) -> int:
    """The length in pixels of an axis of ``pieces`` cells: CELL_PX each, or GRID_MAX_PX in all."""
    return min(CELL_PX * pieces, GRID_MAX_PX)


def labels_fit(pieces: int) -> bool:
    """Whether an axis of ``pieces`` cells is drawn with the pieces as labels (else with their indices)."""
    return grid_pixels(pieces) >= LABEL_MIN_PX * pieces


def figure_pixels(source_pieces: int, target_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of the heatmap of ``target_rows`` x ``source_pieces`` weights."""
    return LEFT_PX + RIGHT_PX + grid_pixels(source_pieces), BOTTOM_PX + TOP_PX + grid_pixels(target_rows)


def shrink(weights, rows: int, cols: int):
    """``weights`` [T, S] as a float32 array of at most GRID_MAX_PX x GRID_MAX_PX: each side longer than
    that is cut into that many runs of pieces, a run keeping its largest weight (so a peak stays
    visible). matplotlib's memory then depends on the figure's size only, never on the line's length."""
    import numpy as np

    grid = np.asarray(weights, dtype=np.float32)  # [T, S]
    for axis, n in ((0, rows), (1, cols)):
        if n > GRID_MAX_PX:
            starts = (np.arange(GRID_MAX_PX) * n) // GRID_MAX_PX  # increasing, first 0: runs of >= 1 piece
            grid = np.maximum.reduceat(grid, starts, axis=axis)
    return grid


def _label(piece: str) -> str:
    return piece if len(piece) <= LABEL_CHARS else piece[: LABEL_CHARS - 1] + "…"


def plot_attention(path: Path, attention: list[list[float]], source: list[str], target: list[str]) -> Path:
    """Write a PNG heatmap of ``attention`` [len(target), len(source)] to ``path`` (atomically): source
    pieces along the bottom, target pieces (EOS as ``</s>``) down the side, darker is more weight.

    At most :func:`figure_pixels` in size: past GRID_MAX_PX / CELL_PX pieces an axis shrinks its cells,
    and where they are too small for labels (:func:`labels_fit`), it is marked with piece indices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows, cols = len(attention), len(source)
    if rows != len(target) or any(len(row) != cols for row in attention):
        raise ValueError(f"attention of {rows} rows for {len(target)} target and {cols} source pieces")
    width, height = figure_pixels(cols, rows)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    # the axes in figure fractions: the cells fill exactly the grid's pixels
    ax = fig.add_axes((LEFT_PX / width, BOTTOM_PX / height, grid_pixels(cols) / width, grid_pixels(rows) / height))
    # extent: the axes count pieces even when shrink() has merged them
    ax.imshow(shrink(attention, rows, cols), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto",
              interpolation="nearest", extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))  # [T,S]
    if labels_fit(cols):
        ax.set_xticks(range(cols), [_label(p) for p in source], rotation=90, fontsize=8)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("source piece (0-based)", fontsize=8)
    if labels_fit(rows):
        ax.set_yticks(range(rows), [_label(p) for p in target], fontsize=8)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="y", labelsize=8)
        ax.set_ylabel("target piece (0-based)", fontsize=8)
    ax.tick_params(length=0)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    plt.close(fig)
    return path
