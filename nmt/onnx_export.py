"""``nmt export --format onnx``: a translation run as ONNX graphs that onnxruntime runs without torch.

The export directory (``RUN/onnx`` by default) holds::

    encoder.onnx       src [B, S] int64, src_len [B] int64
                       -> state_0..m (the decoder's state before the first step),
                          memory_0..n (what every step attends over: attention keys prepared once here)
    decoder_step.onnx  prev [B] int64, state_0..m, memory_0..n
                       -> log_probs [B, V] float32, next_state_0..m (attention and output layer included)
    engine.json        what the runner needs: special ids, sizes, the batch (and source-length) axis of
                       every state and memory tensor, the tokenizer's name and file prefixes
    tokenizer/         the run's fitted tokenizer files

State and memory are whatever the decoder plugin makes of them (for the built-in RNN decoder: the
hidden state, the previous attentional output; the prepared keys, values and mask), flattened into a
list of tensors; their batch axes are found by encoding two batch sizes, so the runner can reorder
beams (``nmt.onnx_engine``) without knowing the decoder.

Exporters: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``) for both graphs, as
the recurrent encoders pack their padded batches (``pack_padded_sequence``), which ``torch.export``
cannot trace (data-dependent shapes) but the TorchScript exporter maps onto the ONNX RNN's
``sequence_lens``. It bakes some sizes of nn.MultiheadAttention in as constants, though, so an
encoder graph that fails on other sizes (the Transformer encoder) is exported again with the
torch.export-based one (``dynamo=True``, needs onnxscript). Both graphs are then run in onnxruntime
against torch on a batch of sizes the trace never saw, before the export is put in place.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

import nmt
from nmt.errors import RunError, UserError
from nmt.io import cleanup_on_sigterm
from nmt.runs import checkpoint_path, fitted_dir, load_run, load_run_recipe

OPSET = 17  # GRU/LSTM with sequence_lens, bool masks; onnxruntime has run it since 1.11
ENGINE_FORMAT = 1
ENCODER_FILE, STEP_FILE, ENGINE_FILE, TOKENIZER_DIR = "encoder.onnx", "decoder_step.onnx", "engine.json", "tokenizer"
TOLERANCE = 1e-3  # largest |log-probability| difference between onnxruntime and torch accepted at export


EXPORT_NAMES = frozenset({ENCODER_FILE, STEP_FILE, ENGINE_FILE, TOKENIZER_DIR})  # all an export holds


def export_onnx(run_dir: Path, output_dir: Path | None = None, checkpoint: str = "best") -> Path:
    """Export the translation run ``run_dir`` into ``output_dir`` (default ``RUN/onnx``); returns it.

    An earlier export there is replaced whole, and only once the new one is complete and checked; a
    folder that holds anything else, or the current directory, is refused."""
    run_dir = Path(run_dir)
    output_dir = Path(output_dir) if output_dir is not None else run_dir / "onnx"
    recipe = load_run_recipe(run_dir)
    if not hasattr(recipe.task_cls, "decode_step"):
        raise UserError(run_dir, f"task '{recipe.spec.task}' does not translate; "
                                 "only translation (seq2seq) runs export to ONNX")
    _require_packages()
    target = _check_output_dir(output_dir)
    task = load_run(run_dir, checkpoint=checkpoint, device="cpu")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(output_dir, "a parent is not a directory") from None
    with cleanup_on_sigterm():  # a SIGTERM removes the half-written export, not the earlier one
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the export from other users
        try:
            try:
                state_axes, memory_axes, exporters = _write_graphs(task, work)
                shutil.copytree(fitted_dir(run_dir), work / TOKENIZER_DIR, ignore=shutil.ignore_patterns("READY"))
                info = _engine_info(task, recipe, checkpoint_path(run_dir, checkpoint), state_axes, memory_axes)
                info["exporters"] = exporters
                (work / ENGINE_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
                _check_graphs(task, work)
            except RunError as exc:  # raised where the run is not known: name it
                raise RunError(exc.where or run_dir, exc.what) from None
            _put_in_place(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return output_dir


def _check_output_dir(output_dir: Path) -> Path:
    """``output_dir`` made absolute (``-o .`` has no name to put a folder beside), once it is known to be
    empty, missing or an earlier export with nothing else in it: the export replaces it whole."""
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        # replaced whole by a rename: a link or a file (/dev/null) there would be removed, not written to
        raise UserError(output_dir, "is a link or not a directory; -o names a directory for the export")
    target = Path(os.path.abspath(output_dir))
    if not output_dir.exists():
        return target
    if target == Path(os.path.abspath(os.curdir)) or target in Path(os.path.abspath(os.curdir)).parents:
        raise UserError(output_dir, "is the current directory or holds it; the export replaces its folder "
                                    "whole: choose another -o, or run from elsewhere")
    entries = sorted(entry.name for entry in target.iterdir())
    others = [name for name in entries if name not in EXPORT_NAMES]
    if entries and (ENGINE_FILE not in entries or others):
        what = f"holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}, " if others else ""
        raise UserError(output_dir, f"is not an ONNX export of nmt ({what}which the export, replacing its folder "
                                    "whole, would remove); choose another -o")
    return target


def _put_in_place(work: Path, target: Path) -> None:
    """Move the complete export ``work`` to ``target``; an earlier export there is moved aside first and
    removed only once the new one is in place (put back if that fails)."""
    if not target.exists():
        work.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    aside.rmdir()  # a free name beside the target
    target.rename(aside)
    try:
        work.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _require_packages() -> None:
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise UserError("--format onnx", f"needs the {name} package: pip install 'nmt[onnx]'") from None


# --- state and memory as flat lists of tensors ------------------------------------------------

def flatten(tree: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) tuple or list, depth first: how graphs take and return state and memory."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in flatten(item)]
    raise RunError(None, f"the decoder's state or memory holds a {type(tree).__name__}; "
                         "only tensors and tuples of them export to ONNX")


def structure(tree: Any) -> Any:
    """The nesting of ``tree`` with None for each tensor (what :func:`unflatten` rebuilds)."""
    return None if isinstance(tree, torch.Tensor) else tuple(structure(item) for item in tree)


def unflatten(leaves: Iterator[torch.Tensor], shape: Any) -> Any:
    return next(leaves) if shape is None else tuple(unflatten(leaves, item) for item in shape)


class EncoderGraph(nn.Module):
    """``task.encode`` with flat outputs: src [B, S], src_len [B] -> (*state tensors, *memory tensors)."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, state = self.task.encode(src, src_len)
        return (*flatten(state), *flatten(memory))


class StepGraph(nn.Module):
    """``task.decode_step`` with flat inputs and outputs: prev [B], *state, *memory -> (log_probs [B, V], *state)."""

    def __init__(self, task: nn.Module, state_shape: Any, memory_shape: Any, n_state: int):
        super().__init__()
        self.task, self.state_shape, self.memory_shape, self.n_state = task, state_shape, memory_shape, n_state

    def forward(self, prev: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = unflatten(iter(tensors[: self.n_state]), self.state_shape)
        memory = unflatten(iter(tensors[self.n_state:]), self.memory_shape)
        log_probs, state = self.task.decode_step(prev, state, memory)  # [B, V]
        return (log_probs, *flatten(state))


def _source(task, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of sources of these lengths (any real token id will do for tracing)."""
    token = len(task.src_tokenizer) - 1
    src = torch.full((len(lengths), max(lengths)), task.src_tokenizer.pad_id, dtype=torch.long)
    for row, length in enumerate(lengths):
        src[row, :length] = token
    return src, torch.tensor(lengths)


def _probe_axes(task) -> tuple[list[dict], list[dict]]:
    """For every state and memory tensor: its batch axis and its source-length axis (or None),
    the axes whose size changes between encodings of 2 and 3 sentences, and of 5 and 6 tokens."""
    def shapes(batch: int, length: int) -> tuple[list, list]:
        memory, state = task.encode(*_source(task, [length] * batch))
        return [t.shape for t in flatten(state)], [t.shape for t in flatten(memory)]

    base, more_rows, longer = shapes(2, 5), shapes(3, 5), shapes(2, 6)
    found = []
    for kind, k in (("state", 0), ("memory", 1)):
        axes = []
        for i, (a, b, c) in enumerate(zip(base[k], more_rows[k], longer[k])):
            batch_axes = [d for d in range(len(a)) if a[d] != b[d]]
            length_axes = [d for d in range(len(a)) if a[d] != c[d]]
            if len(batch_axes) != 1 or len(length_axes) > 1:
                raise RunError(None, f"the decoder's {kind} tensor {i} (shape {list(a)}) has no single batch axis; "
                                     "it cannot be exported to ONNX")
            axes.append({"name": f"{kind}_{i}", "batch_axis": batch_axes[0],
                         "src_len_axis": length_axes[0] if length_axes else None})
        found.append(axes)
    return found[0], found[1]


def _dynamic(axes: dict) -> dict[int, str]:
    named = {axes["batch_axis"]: "batch"}
    if axes["src_len_axis"] is not None:
        named[axes["src_len_axis"]] = "src_len"
    return named


def _write_graphs(task, directory: Path) -> tuple[list[dict], list[dict], dict[str, str]]:
    """Write encoder.onnx and decoder_step.onnx with dynamic batch and source-length axes; returns the
    axes of state and memory and which exporter wrote each graph."""
    state_axes, memory_axes = _probe_axes(task)
    src, src_len = _source(task, [5, 3])  # one padded row, so the traced graph handles padding
    memory, state = task.encode(src, src_len)
    state_names = [a["name"] for a in state_axes]
    memory_names = [a["name"] for a in memory_axes]
    encoder_axes = {"src": {0: "batch", 1: "src_len"}, "src_len": {0: "batch"},
                    **{a["name"]: _dynamic(a) for a in state_axes + memory_axes}}
    step_axes = {"prev": {0: "batch"}, "log_probs": {0: "batch"},
                 **{a["name"]: _dynamic(a) for a in state_axes + memory_axes},
                 **{f"next_{a['name']}": _dynamic(a) for a in state_axes}}
    # in eval mode: the exporter restores the wrapper's mode afterwards, and with it the task's (a new
    # module is in training mode, which would turn dropout on for everything after the export)
    encoder = EncoderGraph(task).eval()
    step = StepGraph(task, structure(state), structure(memory), len(state_names)).eval()
    prev = torch.full((src.size(0),), task.bos_id, dtype=torch.long)
    exporters = {"encoder": "torchscript", "decoder_step": "torchscript"}
    with torch.no_grad(), _without_fused_attention(), _quiet_exporter():
        encoder_path = str(directory / ENCODER_FILE)
        torch.onnx.export(encoder, (src, src_len), encoder_path, dynamo=False, opset_version=OPSET,
                          input_names=["src", "src_len"], output_names=state_names + memory_names,
                          dynamic_axes=encoder_axes)
        if not _encoder_matches(task, directory / ENCODER_FILE):
            _export_with_torch_export(encoder, (src, src_len), encoder_path, state_names + memory_names)
            exporters["encoder"] = "dynamo"
        torch.onnx.export(step, (prev, *flatten(state), *flatten(memory)), str(directory / STEP_FILE), dynamo=False,
                          opset_version=OPSET, input_names=["prev", *state_names, *memory_names],
                          output_names=["log_probs", *[f"next_{name}" for name in state_names]], dynamic_axes=step_axes)
    return state_axes, memory_axes, exporters


def _encoder_matches(task, path: Path) -> bool:
    """Whether the encoder graph computes what ``task.encode`` does on a batch of other sizes: the
    TorchScript exporter bakes some sizes in as constants (nn.MultiheadAttention's reshapes)."""
    import onnxruntime as ort

    src, src_len = _source(task, [7, 2, 4])
    memory, state = task.encode(src, src_len)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"src": src.numpy(), "src_len": src_len.numpy()})
    except Exception:  # onnxruntime raises its own types (Fail, InvalidArgument, RuntimeException)
        return False
    expected = [t.numpy() for t in flatten(state) + flatten(memory)]
    return all(a.shape == b.shape and np.allclose(a, b, atol=TOLERANCE) for a, b in zip(outputs, expected))


def _export_with_torch_export(module: nn.Module, args: tuple, path: str, output_names: list[str]) -> None:
    """The encoder through the torch.export-based exporter (needs onnxscript): it keeps every size
    symbolic, but cannot trace packed sequences, so it is the second choice, for non-recurrent encoders."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise RunError(None, "the TorchScript exporter gives this encoder fixed sizes; pip install onnxscript "
                             "for the torch.export-based exporter (or pip install 'nmt[onnx]')") from None
    batch, length = torch.export.Dim("batch"), torch.export.Dim("src_len")
    try:
        torch.onnx.export(module, args, path, dynamo=True, opset_version=max(OPSET, 18), verbose=False,
                          input_names=["src", "src_len"], output_names=output_names,
                          dynamic_shapes={"src": {0: batch, 1: length}, "src_len": {0: batch}})
    except Exception as exc:  # torch.export's errors are pages long: the first line names the cause
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RunError(None, f"the encoder does not export to ONNX with dynamic shapes ({reason})") from None


@contextlib.contextmanager
def _without_fused_attention():
    """Turn off PyTorch's fused inference kernels for nn.TransformerEncoder and nn.MultiheadAttention
    (``aten::_transformer_encoder_layer_fwd`` has no ONNX form); the plain ops they replace export."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's deprecation notice and the shape-inference warnings its C++ passes print
    straight to file descriptor 2 (about prim::PackPadded, which it then exports correctly); what was
    printed is shown after all if the export fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_graphs(task, directory: Path) -> None:
    """Run the export with the onnxruntime engine on a batch the trace never saw (other sizes, rows
    reordered and repeated as beam search does) and compare with torch: an export that computes
    something else fails here, not in production."""
    from nmt.onnx_engine import OnnxEngine

    try:
        _compare_search_steps(task, OnnxEngine(directory, threads=1))
    except RunError:
        raise
    except Exception as exc:  # onnxruntime's own error types
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RunError(None, f"the exported graphs do not run on other batch sizes ({reason})") from None


def _compare_search_steps(task, engine) -> None:
    """Encode, reorder as beam search does and take three steps in torch and in onnxruntime."""
    src, src_len = _source(task, [7, 2, 4])
    src[:, 0] = torch.tensor([4, 5, 6]).clamp(max=len(task.src_tokenizer) - 1)  # rows differ
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        memory, state = task.encode(src, src_len)
        memory, state = task.select_memory(memory, index), task.select_state(state, index)
        onnx_memory, onnx_state = engine.encode(src.numpy(), src_len.numpy())
        onnx_memory = engine.select_memory(onnx_memory, index.numpy())
        onnx_state = engine.select_state(onnx_state, index.numpy())
        prev = torch.full((len(index),), task.bos_id, dtype=torch.long)
        for _ in range(3):
            log_probs, state = task.decode_step(prev, state, memory)  # [4, V]
            onnx_log_probs, onnx_state = engine.decode_step(prev.numpy(), onnx_state, onnx_memory)
            worst = float(np.abs(onnx_log_probs - log_probs.numpy()).max())
            if not worst <= TOLERANCE:
                raise RunError(None, f"the exported decoder step differs from the model by {worst:.3g} "
                                          f"in log-probability (tolerance {TOLERANCE})")
            prev = log_probs.argmax(-1)


def _engine_info(task, recipe, checkpoint: Path, state_axes: list[dict], memory_axes: list[dict]) -> dict:
    joint = recipe.data.joint_vocab
    return {
        "format": ENGINE_FORMAT,
        "nmt_version": nmt.__version__,
        "run": recipe.name,
        "checkpoint": checkpoint.name,
        "pad_id": task.src_tokenizer.pad_id,
        "bos_id": task.bos_id,
        "eos_id": task.eos_id,
        "src_vocab_size": len(task.src_tokenizer),
        "tgt_vocab_size": len(task.tgt_tokenizer),
        "max_length": recipe.data.max_length,  # the longest training sentence (translate warns beyond it)
        "tokenizer": {"name": recipe.components["data.tokenizer"].cls.registered_name,
                      "src": "joint" if joint else "src", "tgt": "joint" if joint else "tgt"},
        "state": state_axes,
        "memory": memory_axes,
    }
