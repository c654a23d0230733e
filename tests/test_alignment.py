"""Attention the searches report, and what ``nmt translate`` makes of it: heatmaps and alignments.

The weights a hypothesis carries are checked against the decoder's own teacher-forced attention over
the same tokens, so beam search must have followed the winning path through every reordering of the
beams. A copy task trained for a few seconds must align each target piece with the same source piece.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from conftest import WORDS, reverse_recipe, write_recipe  # noqa: E402
from reliability_support import reliability_data, run_cli, trained_run  # noqa: E402,F401

from nmt import search  # noqa: E402
from nmt.alignment import BOTTOM_PX, CELL_PX, LEFT_PX, TOP_PX, figure_pixels, hard_alignment, pharaoh  # noqa: E402
from nmt.cli import main  # noqa: E402
from nmt.runs import load_run  # noqa: E402
from nmt.translate import encode_lines, translate_lines  # noqa: E402

# Lengths 1 to 9 in one batch: beam search drops sentences from the middle of the batch as they finish
# (and the trained run's "b2" runs to the length cap), so every path of the row bookkeeping is taken.
LINES = ["e2 a2 c0", "d3 d2", "f0 d0 b2 a3 d3 a0 d0 d1", "f2", "c0 f3 b3 e2 a3 c2 a0 a0", "b2",
         "a0 d0 f1 b2 d1 f3 a0 e0 b3", "d3 e1 b3 c3 b3 f1 b3 d2", "a0 d1 e1 f0 a3", "f0 f3 c1", "f3 c2"]


def rows(line: str, tokens) -> int:
    """Target pieces and EOS, or only the pieces for a hypothesis cut at the length cap (ratio 2)."""
    cap = 2 * len(line.split()) + 10
    return len(tokens) + (len(tokens) < cap)


@pytest.fixture(scope="module")
def task(trained_run):
    return load_run(trained_run, device="cpu")


def teacher_forced_attention(task, line: str, hyp: search.Hypothesis) -> torch.Tensor:
    """The decoder's attention [steps, S] when fed ``hyp``'s tokens after BOS: the row of step t is
    the one that produced token t (and the last one EOS, when the hypothesis ended with it)."""
    ids = task.src_tokenizer.encode(line)
    ended = len(hyp.attention) == len(hyp.tokens) + 1
    inputs = [task.bos_id] + (hyp.tokens if ended else hyp.tokens[:-1])
    with torch.no_grad():
        memory, state = task.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
        _, _, weights = task.decoder(task.tgt_embed(torch.tensor([inputs])), state, memory)  # [1, T, S]
    return weights[0]


# alpha 0: a sentence leaves the beam batch as soon as its best is found, while others search on
@pytest.mark.parametrize("beam, nbest, alpha", [(1, 1, 0.6), (4, 3, 0.0), (4, 2, 0.6)],
                         ids=["greedy", "beam", "beam-alpha"])
def test_hypotheses_carry_the_attention_of_their_own_path(task, beam, nbest, alpha):
    results = translate_lines(task, LINES, beam=beam, nbest=nbest, alpha=alpha, batch_tokens=4000,
                              max_length_ratio=2.0, attention=True)
    for line, hyps in zip(LINES, results):
        assert len(hyps) == nbest
        for hyp in hyps:
            weights = torch.tensor(hyp.attention)
            # a row per target piece and one for EOS (unless cut at the length cap), a column per real
            # source piece (no padding)
            assert weights.shape == (rows(line, hyp.tokens), len(line.split())), (line, hyp)
            torch.testing.assert_close(weights, teacher_forced_attention(task, line, hyp), atol=1e-5, rtol=1e-4)


def test_asking_for_attention_changes_no_hypothesis_and_not_asking_costs_none(task):
    for beam, nbest in ((1, 1), (4, 3)):
        plain = translate_lines(task, LINES, beam, nbest, 0.6, 4000, 2.0)
        kept = translate_lines(task, LINES, beam, nbest, 0.6, 4000, 2.0, attention=True)
        strip = [[(h.tokens, round(h.score, 5)) for h in hyps] for hyps in kept]
        assert [[(h.tokens, round(h.score, 5)) for h in hyps] for hyps in plain] == strip
        assert all(h.attention is None for hyps in plain for h in hyps)


class NeverEnds(torch.nn.Module):
    """A toy decoder that never ends (EOS is the least likely token) and whose attention depends on the
    token it was fed, so a hypothesis's weights show which path they came from."""

    bos_id, eos_id = 2, 3

    def encode(self, src, src_len):
        return src.float(), torch.zeros(src.size(0))  # memory [B,S]: the source ids themselves

    @staticmethod
    def weights(prev, memory):
        return torch.softmax(memory * (prev.float().unsqueeze(1) + 1) / 10, dim=-1)  # [B,S]

    def decode_step_with_attention(self, prev, state, memory):
        log_probs = torch.full((prev.size(0), 6), -1.0) + torch.arange(6) * 0.01  # a fixed order, no ties
        log_probs[:, self.eos_id] = -10.0
        return log_probs, state, self.weights(prev, memory)

    def select_state(self, state, index):
        return state[index]

    def select_memory(self, memory, index):
        return memory[index]


def test_a_hypothesis_cut_at_the_length_cap_has_the_rows_of_its_own_tokens():
    src, src_len = torch.tensor([[4, 5, 0, 0], [4, 5, 5, 4]]), torch.tensor([2, 4])  # caps 11 and 12 tokens
    greedy = [[h] for h in search.greedy_search(NeverEnds(), src, src_len, max_length_ratio=0.5, attention=True)]
    beam = search.beam_search(NeverEnds(), src, src_len, 3, 0.0, 3, 0.5, attention=True)
    for hyps in (*greedy, *beam):
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)  # (the beams' paths differ)
    for results in (greedy, beam):
        for b, hyps in enumerate(results):
            for h in hyps:
                length = int(src_len[b])
                assert len(h.tokens) == 10 + length // 2  # the cap: no EOS, so no EOS row
                fed = torch.tensor([NeverEnds.bos_id] + h.tokens[:-1])
                expected = NeverEnds.weights(fed, src[b].float().expand(len(fed), -1))[:, :length]
                torch.testing.assert_close(torch.tensor(h.attention), expected)


def test_hard_alignment_is_the_most_attended_source_piece_per_target_piece():
    attention = [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]  # last row: EOS
    assert hard_alignment(attention, 3) == [(1, 0), (0, 1), (2, 2)]
    assert pharaoh(attention, 3) == "1-0 0-1 2-2"
    assert pharaoh(None, 0) == ""


# --- nmt translate --plot-attention / --alignments -------------------------------------------------

def cells(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The grey level [rows, cols] at the centre of each heatmap cell (0 black, 1 white)."""
    ys = [TOP_PX + CELL_PX * i + CELL_PX // 2 for i in range(rows)]
    xs = [LEFT_PX + CELL_PX * j + CELL_PX // 2 for j in range(cols)]
    return image[np.ix_(ys, xs)][..., :3].mean(axis=-1)


# greedy: the trained run's "b2" runs to the length cap (no EOS row); chunks of 4 lines: plots keep
# their input line numbers from chunk to chunk
@pytest.mark.parametrize("beam", ["1", "3"])
def test_translate_plots_a_heatmap_per_line_and_prints_alignments(task, trained_run, tmp_path, capsys,
                                                                  monkeypatch, beam):
    import matplotlib.image

    monkeypatch.setattr("nmt.translate.CHUNK_LINES", 4)
    lines = LINES[:3] + [""] + LINES[3:]
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines))
    plots = tmp_path / "plots" / "deeper"  # created, parents too
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "-i", tmp_path / "in.txt", "--beam", beam,
                             "--device", "cpu", "--plot-attention", plots, "--alignments")
    assert code == 0, err
    plain = run_cli(capsys, "translate", "--run", trained_run, "-i", tmp_path / "in.txt", "--beam", beam,
                    "--device", "cpu")[1].splitlines()
    outputs = out.splitlines()
    assert [o.split(" ||| ")[0] for o in outputs] == plain  # the translations are unchanged
    assert outputs[3] == " ||| "  # the empty line: no translation, no alignment, no plot
    assert sorted(p.name for p in plots.iterdir()) == [f"{n:06d}.png" for n, line in enumerate(lines, 1) if line]
    best = translate_lines(task, lines, int(beam), 1, 0.6, 4000, 2.0, attention=True)  # what the plots show
    for number, (line, output, hyps) in enumerate(zip(lines, outputs, best), start=1):
        if not line:
            continue
        weights = np.array(hyps[0].attention)  # [target pieces (+ EOS), source pieces]
        translation, alignment = output.split(" ||| ")
        n_src, n_rows = len(line.split()), rows(line, translation.split())
        pairs = [tuple(map(int, p.split("-"))) for p in alignment.split()]
        assert pairs == [(int(row.argmax()), j) for j, row in enumerate(weights[:len(translation.split())])]
        image = matplotlib.image.imread(plots / f"{number:06d}.png")  # [H, W, RGBA]
        assert (image.shape[1], image.shape[0]) == figure_pixels(n_src, n_rows)  # sized by the pieces
        grey = cells(image, n_rows, n_src)  # [target, source]
        if n_src > 1:
            assert np.unique(grey.round(3)).size > 1, number  # not blank: the cells differ
        # and they show the weights: a heavier weight is never lighter (Greys: 0 white, 1 black)
        order = np.argsort(weights, axis=None, kind="stable")
        assert np.all(np.diff(grey.reshape(-1)[order]) <= 1e-6), number


@pytest.mark.parametrize("where, words", [("taken", "is a file"),
                                           ("taken/plots", "cannot create the --plot-attention directory")])
def test_plot_attention_where_no_directory_can_be_is_one_line_before_loading(tmp_path, capsys, where, words):
    (tmp_path / "in.txt").write_text("a0 b1\n")
    (tmp_path / "taken").write_text("a file\n")
    code, out, err = run_cli(capsys, "translate", "--run", tmp_path / "no-run", "-i", tmp_path / "in.txt",
                             "--plot-attention", tmp_path / where)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("nmt: ") and words in err and str(tmp_path / where) in err, err  # not the missing run


def test_a_long_line_s_heatmap_is_bounded_and_keeps_its_peaks(tmp_path):
    """320 source pieces and 3000 target rows (a long line at --max-length-ratio 10): at 30 px a piece
    this was a 9,730 x 90,130 PNG (tens of GB while drawing); the figure now has at most 2,000 px a side
    and each alignment peak stays visible where its pieces are."""
    import matplotlib.image

    from nmt.alignment import plot_attention

    rows, cols = 3000, 320
    width, height = figure_pixels(cols, rows)
    assert width <= 2000 and height <= 2000, (width, height)  # before drawing: the old sizes cannot be drawn
    attention = np.zeros((rows, cols), dtype=np.float32)
    peaks = [(0, 0), (1234, 17), (2999, 319), (2500, 200)]
    for r, c in peaks:
        attention[r, c] = 1.0
    path = plot_attention(tmp_path / "long.png", attention.tolist(), [f"s{j}" for j in range(cols)],
                          [f"t{i}" for i in range(rows)])
    image = matplotlib.image.imread(path)[..., :3].mean(axis=-1)  # [H, W] grey, 1 white
    assert (image.shape[1], image.shape[0]) == (width, height)
    grid_w, grid_h = width - LEFT_PX - 20, height - TOP_PX - BOTTOM_PX  # (RIGHT_PX 20)
    for r, c in peaks:
        y, x = TOP_PX + int((r + 0.5) * grid_h / rows), LEFT_PX + int((c + 0.5) * grid_w / cols)
        assert image[y - 1:y + 2, x - 1:x + 2].min() < 0.2, (r, c)  # dark where the weight is
    grid = image[TOP_PX + 2:TOP_PX + grid_h - 2, LEFT_PX + 2:LEFT_PX + grid_w - 2]
    assert (grid > 0.9).mean() > 0.95  # and white elsewhere: a merged run of pieces keeps its largest weight


def test_a_line_too_long_for_labels_is_plotted_with_a_warning_naming_it(trained_run, tmp_path, capsys):
    import matplotlib.image

    (tmp_path / "in.txt").write_text("a0 b1\n" + " ".join(["c2 d3"] * 80) + "\n")  # line 2: 160 pieces
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "-i", tmp_path / "in.txt", "--beam", "1",
                             "--device", "cpu", "--max-input-tokens", "200", "--plot-attention", tmp_path / "plots")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "heatmap" in line]
    assert warnings == [f"nmt: warning: {tmp_path / 'in.txt'}:2: too many pieces to label in its attention "
                        "heatmap; its axes show piece indices (0-based) instead"], err
    small, long = (matplotlib.image.imread(tmp_path / "plots" / f"00000{n}.png") for n in (1, 2))
    assert max(long.shape[:2]) <= 2000 and small.shape[0] < long.shape[0]


def test_engine_onnx_with_plot_attention_is_refused_before_creating_the_directory(trained_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a0 b1\n")
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "-i", tmp_path / "in.txt",
                             "--engine", "onnx", "--plot-attention", tmp_path / "plots")
    assert code == 2 and err.splitlines() == ["nmt: --plot-attention: needs attention weights, which --engine onnx "
                                              "does not report; use --engine torch"], err
    assert not (tmp_path / "plots").exists()


def test_a_failed_translate_creates_no_plot_directory(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a0 b1\n")
    code, out, err = run_cli(capsys, "translate", "--run", tmp_path / "no-run", "-i", tmp_path / "in.txt",
                             "--plot-attention", tmp_path / "new" / "plots")
    assert code == 2 and "no-run" in err, err
    assert not (tmp_path / "new").exists()


def write_copy_corpus(directory: Path, n_train: int = 1500, n_dev: int = 100, seed: int = 0) -> Path:
    """A toy task whose target is its source: the right alignment is the diagonal."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + "\n" for _ in range(n))
        (directory / f"{split}.src").write_text(text)
        (directory / f"{split}.tgt").write_text(text)
    return directory


def test_a_copy_task_aligns_each_piece_with_itself(tmp_path, capsys):
    data = write_copy_corpus(tmp_path / "data")
    recipe = write_recipe(tmp_path / "copy.yaml", reverse_recipe(data, name="copy", trainer={"max_epochs": 10}))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    code, out, err = run_cli(capsys, "translate", "--run", tmp_path / "run", "-i", data / "dev.src",
                             "--device", "cpu", "--alignments")
    assert code == 0, err
    pairs = [p.split("-") for line in out.splitlines() for p in line.split(" ||| ")[1].split()]
    diagonal = sum(i == j for i, j in pairs) / len(pairs)
    assert diagonal > 0.8, diagonal  # about 0.9 after these 10 epochs (150 steps)
