"""Translation speed on the CPU: torch against onnxruntime (float32 and dynamic int8), side by side.

    OMP_NUM_THREADS=1 python benchmarks/onnx_speed.py --run DIR [--sentences N] [--repeats 2]

Exports the run (``nmt export --format onnx``) into a temporary folder, quantizes a copy of both
graphs with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights), then translates the same
sentences with each engine, greedy and with beam 5 (alpha 0.6, the defaults of nmt translate), and
prints sentences per second, the ratio to torch and the share of lines identical to torch's.
Engines take turns within each round and the best of ``--repeats`` rounds is kept, so load on a
shared machine hits all alike. Both engines get the same number of threads (torch's: $OMP_NUM_THREADS).

For a Multi30k en-de run the sentences are the first N of test_2016_flickr (all 1000 by default)
and each engine's BLEU against the references is printed (sacrebleu, signature below the table);
for any other translation run, N sentences (300 by default) built from the run's vocabulary.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from nmt.bench import probe_sentences
from nmt.data.text import read_lines
from nmt.metrics import score
from nmt.onnx_engine import OnnxEngine
from nmt.onnx_export import ENCODER_FILE, STEP_FILE, export_onnx
from nmt.recipe import default_data_root, resolve_data_path
from nmt.runs import load_run
from nmt.translate import translate_lines

MODES = {"greedy": 1, "beam 5": 5}


def multi30k_test(task) -> tuple[list[str], list[str]] | None:
    """(sources, references) of test_2016_flickr when the run is a Multi30k en-de run, else None."""
    data = task.recipe.data
    split = getattr(data, "test", {}).get("test_2016_flickr")
    if split is None or not (split.src.endswith("multi30k/test_2016_flickr.en.gz")
                             and split.tgt.endswith("multi30k/test_2016_flickr.de.gz")):
        return None
    root = data.root or default_data_root()
    return read_lines(resolve_data_path(split.src, root)), read_lines(resolve_data_path(split.tgt, root))


def quantize(export: Path, into: Path) -> Path:
    """A copy of the export with both graphs' weights dynamically quantized to int8 (after
    onnxruntime's recommended pre-processing: shape inference and graph optimisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    shutil.copytree(export, into)
    for name in (ENCODER_FILE, STEP_FILE):
        prepared = into / f"prepared-{name}"
        quant_pre_process(str(export / name), str(prepared))
        quantize_dynamic(prepared, into / name, weight_type=QuantType.QInt8)
        prepared.unlink()
    return into


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="A translation run directory.")
    parser.add_argument("--sentences", type=int, help="How many sentences [default: 1000 of Multi30k's test set, else 300].")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds; the best rate of each is kept [default: 2].")
    parser.add_argument("--checkpoint", default="best")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    task = load_run(args.run, checkpoint=args.checkpoint, device="cpu")
    test = multi30k_test(task)
    if test is not None:
        sources, references = test
        n = min(args.sentences or len(sources), len(sources))
        sources, references = sources[:n], references[:n]
        what = f"the first {n} of test_2016_flickr (en-de)" if n < len(test[0]) else f"all {n} of test_2016_flickr (en-de)"
    else:
        pool, _, _ = probe_sentences(args.run)
        n = args.sentences or 300
        sources, references, what = [pool[i % len(pool)] for i in range(n)], None, f"{n} sentences from the vocabulary"

    work = Path(tempfile.mkdtemp(prefix="nmt-onnx-speed-"))
    try:
        export = export_onnx(args.run, work / "onnx", args.checkpoint)
        engines = {
            "torch": task,
            "onnxruntime": OnnxEngine(export, threads=threads),
            "onnxruntime int8": OnnxEngine(quantize(export, work / "onnx-int8"), threads=threads),
        }
        rates, outputs = measure(engines, sources, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"benchmarks/onnx_speed.py --run {args.run}: {what}, CPU, {threads} thread(s) each, "
          f"best of {args.repeats}; torch {torch.__version__}, onnxruntime {_ort_version()}")
    header = f"{'engine':<18}" + "".join(f"{mode + ' sent/s':>15} {'x torch':>8} {'= torch':>8}"
                                          + (f" {'BLEU':>6}" if references else "") for mode in MODES)
    print(header)
    signature = None
    for name in engines:
        row = f"{name:<18}"
        for mode in MODES:
            hyps, base = outputs[name, mode], outputs["torch", mode]
            same = sum(a == b for a, b in zip(hyps, base)) / len(hyps)
            row += f"{rates[name, mode]:15.1f} {rates[name, mode] / rates['torch', mode]:8.2f} {same:8.1%}"
            if references:
                bleu = score(hyps, [references], ("bleu",))["bleu"]
                row += f" {bleu.score:6.2f}"
                signature = bleu.signature
        print(row)
    if signature:
        print(f"BLEU: sacrebleu {signature}")


def measure(engines: dict, sources: list[str], repeats: int) -> tuple[dict, dict]:
    """Best sentences per second and the detokenised outputs of each (engine, mode)."""
    rates, outputs = {}, {}
    with torch.inference_mode():
        for engine in engines.values():  # warm-up: lazy initialisation and the first allocations
            translate_lines(engine, sources[:16], 5, 1, 0.6, 4000, 2.0)
        for _ in range(repeats):
            for mode, beam in MODES.items():
                for name, engine in engines.items():
                    start = time.perf_counter()
                    results = translate_lines(engine, sources, beam, 1, 0.6, 4000, 2.0)
                    rate = len(sources) / (time.perf_counter() - start)
                    rates[name, mode] = max(rate, rates.get((name, mode), 0.0))
                    outputs[name, mode] = [engine.tgt_tokenizer.decode(h[0].tokens) if h else "" for h in results]
    return rates, outputs


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
