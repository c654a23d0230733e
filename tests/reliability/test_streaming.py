"""Streaming translation: input is read and written in chunks, memory stays flat, order is kept."""
from __future__ import annotations

import pytest

from nmt import bench, translate
from reliability_support import reliability_data, trained_run  # noqa: F401


def test_chunked_translation_keeps_line_order(tmp_path, monkeypatch, trained_run):
    """Many small chunks (7 lines), probes at known positions: output line i answers input line i."""
    monkeypatch.setattr(translate, "CHUNK_LINES", 7)
    monkeypatch.setattr(bench, "PROBE_EVERY", 10)
    pool, probe_a, probe_b = bench.probe_sentences(trained_run)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    bench.write_input(src, 95, pool, probe_a, probe_b)
    with src.open("a") as f:
        f.write("\n")  # a blank line gets a blank output line
    translate.translate_file(trained_run, beam=1, input_path=src, output_path=out, device="cpu")
    lines = out.read_text().split("\n")[:-1]
    assert len(lines) == 96 and lines[-1] == ""
    ok, detail = bench.check_order(_first(out, tmp_path, 95), 95)
    assert ok, detail


def _first(path, tmp_path, n):
    cut = tmp_path / "cut.txt"
    cut.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return cut


@pytest.mark.slow
def test_peak_memory_is_flat_from_2k_to_20k_lines(trained_run):
    """``nmt translate`` children on 2,000 and 20,000 lines: peak RSS within 20%, order kept."""
    results = bench.streaming_memory(trained_run, device="cpu", sizes=(2_000, 20_000), echo=print)
    assert all(r.order_ok for r in results), [r.detail for r in results]
    small, large = results[0].peak_rss_mib, results[1].peak_rss_mib
    assert large <= small * 1.2, (small, large)
