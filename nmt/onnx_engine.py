"""Translation without torch: greedy and batched beam search on onnxruntime and numpy.

Reads what ``nmt export --format onnx`` wrote (see :mod:`nmt.onnx_export`): ``encoder.onnx``,
``decoder_step.onnx``, ``engine.json`` and ``tokenizer/``. The search is :mod:`nmt.search` step for
step in numpy, with the same GNMT length penalty, the same length cap (``int(src_len * ratio) + 10``
in float32, as torch computes it) and the same early exit of finished sentences, so both engines
give the same translations up to float rounding (which can only flip near-ties).

Neither this module nor what it imports loads torch: the built-in tokenizers (sentencepiece,
whitespace, characters) are read here from their files, and batching is
:func:`nmt.data.buckets.search_batches` (numpy only), as for the torch engine.
A third-party tokenizer is loaded through nmt's registry, which does import torch (not used).

    engine = OnnxEngine("runs/en-de/onnx")
    hyps = engine.translate_lines(["A man rides a bike."], beam=5)
    engine.tgt_tokenizer.decode(hyps[0][0].tokens)
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nmt.data.buckets import search_batches
from nmt.data.sentencepiece_model import open_sentencepiece
from nmt.errors import RunError, UserError, shorten
from nmt.search_rules import Hypothesis, beam_step, greedy_step

ENGINE_FORMAT = 1
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3  # as nmt.data.tokenizer
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")

Arrays = list[np.ndarray]


# --- tokenizers, from their files -------------------------------------------------------------

class SentencePieceFiles:
    """The ``sentencepiece`` tokenizer from ``<prefix>.model`` (ids as the nmt plugin gives them)."""

    def __init__(self, path: Path):
        self.processor = open_sentencepiece(path, RunError, EXPORT_AGAIN)
        self.pad_id = PAD_ID

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])  # pad, bos, eos are control pieces: dropped

    def __len__(self) -> int:
        return self.processor.get_piece_size()


class VocabularyFiles:
    """The ``whitespace`` and ``characters`` tokenizers from ``<prefix>.vocab.json``, as the nmt plugins."""

    def __init__(self, path: Path, separator: str):
        try:
            self.tokens = json.loads(path.read_text(encoding="utf-8"))["tokens"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(path, f"vocabulary file missing or unreadable ({str(exc)[:80]}); export the run again") from None
        self.index = {token: i for i, token in enumerate(self.tokens) if i >= len(SPECIAL_PIECES)}
        self.separator, self.pad_id = separator, PAD_ID

    def encode(self, text: str) -> list[int]:
        pieces = text.split() if self.separator else list(text)
        return [self.index.get(piece, UNK_ID) for piece in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        return self.separator.join(self.tokens[i] for i in map(int, ids) if i not in (PAD_ID, BOS_ID, EOS_ID))

    def __len__(self) -> int:
        return len(self.tokens)


def load_tokenizer(directory: Path, name: str, prefix: str):
    """The tokenizer ``name`` saved under ``prefix`` in ``directory``."""
    if name == "sentencepiece":
        return SentencePieceFiles(directory / f"{prefix}.model")
    if name in ("whitespace", "characters"):
        return VocabularyFiles(directory / f"{prefix}.vocab.json", " " if name == "whitespace" else "")
    from nmt import registry  # a plugin's tokenizer: through the registry (which imports torch)

    return registry.get("tokenizer", name).load(directory, prefix)


# --- the export's files, checked as they are read ------------------------------------------------

EXPORT_AGAIN = "export the run again (nmt export --run RUN --format onnx)"


def check_engine_info(info: dict, path: Path) -> None:
    """Every field of ``engine.json`` the engine reads, of the right type, or a one-line RunError naming it."""
    def fail(field: str, expected: str):
        raise RunError(path, f"{field} is missing or not {expected}; {EXPORT_AGAIN}")

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for field in ("bos_id", "eos_id", "max_length"):
        if not integer(info.get(field)):
            fail(field, "an integer")
    for field in ("state", "memory"):
        axes = info.get(field)
        if not isinstance(axes, list) or not all(
                isinstance(a, dict) and isinstance(a.get("name"), str) and integer(a.get("batch_axis")) for a in axes):
            fail(field, "a list of {name, batch_axis}")
    tokenizer = info.get("tokenizer")
    if not isinstance(tokenizer, dict) or not all(isinstance(tokenizer.get(k), str) for k in ("name", "src", "tgt")):
        fail("tokenizer", "{name, src, tgt}")


def load_graph(ort, path: Path, options, role: str, inputs: list[str], outputs: int):
    """An onnxruntime session of ``path``, checked to be ``role`` of this export: its input names are
    ``inputs`` and it has ``outputs`` outputs. A missing, damaged or swapped file is a one-line RunError."""
    if not path.is_file():
        raise RunError(path, f"ONNX graph not found; {EXPORT_AGAIN}")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own types (InvalidProtobuf, Fail, InvalidGraph ...), none a subclass
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed:Protobuf parsing failed."
        message = " ".join(str(exc).split())
        reason = message.rsplit("failed:", 1)[1].strip() if "failed:" in message else message
        raise RunError(path, f"not a readable ONNX graph ({type(exc).__name__}: {shorten(reason)}); "
                             f"{EXPORT_AGAIN}") from None
    found = [i.name for i in session.get_inputs()]
    if sorted(found) != sorted(inputs) or len(session.get_outputs()) != outputs:
        raise RunError(path, f"not {role} of this export (inputs {shorten(', '.join(found))}, expected "
                             f"{shorten(', '.join(inputs))}; {len(session.get_outputs())} outputs, expected "
                             f"{outputs}); {EXPORT_AGAIN}")
    return session


# --- the engine: two onnxruntime sessions -----------------------------------------------------

class OnnxEngine:
    """The exported encoder and decoder step, with the decoding protocol of :mod:`nmt.search`:
    ``encode``, ``decode_step``, ``select_state``, ``select_memory``, ``bos_id``, ``eos_id``.

    ``threads``: onnxruntime's intra-op threads; default ``$OMP_NUM_THREADS`` when set (as torch),
    else onnxruntime's own choice (one per physical core). ``model_files`` names other graph files
    in the directory (e.g. quantized ones) as (encoder, decoder step)."""

    def __init__(self, directory: Path, threads: int | None = None,
                 model_files: tuple[str, str] = ("encoder.onnx", "decoder_step.onnx")):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("--engine onnx", "needs the onnxruntime package: pip install 'nmt[onnx]'") from None
        self.directory = directory = Path(directory)
        info_path = directory / "engine.json"
        if not info_path.is_file():
            raise RunError(directory, "no ONNX export here (no engine.json); "
                                      "write one with nmt export --run RUN --format onnx")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(info_path, f"unreadable ({str(exc)[:80]})") from None
        if not isinstance(info, dict) or info.get("format") != ENGINE_FORMAT:
            raise RunError(info_path, f"export format {info.get('format', '?') if isinstance(info, dict) else '?'} "
                                      f"is not supported (expected {ENGINE_FORMAT}); {EXPORT_AGAIN}")
        check_engine_info(info, info_path)
        self.info = info
        self.bos_id, self.eos_id, self.max_length = info["bos_id"], info["eos_id"], info["max_length"]
        self.state_axes = [a["batch_axis"] for a in info["state"]]
        self.memory_axes = [a["batch_axis"] for a in info["memory"]]
        self.state_names = [a["name"] for a in info["state"]]
        self.memory_names = [a["name"] for a in info["memory"]]
        tokenizer = info["tokenizer"]
        self.src_tokenizer = load_tokenizer(directory / "tokenizer", tokenizer["name"], tokenizer["src"])
        self.tgt_tokenizer = (self.src_tokenizer if tokenizer["tgt"] == tokenizer["src"] else
                              load_tokenizer(directory / "tokenizer", tokenizer["name"], tokenizer["tgt"]))
        options = ort.SessionOptions()
        threads = threads if threads is not None else int(os.environ.get("OMP_NUM_THREADS") or 0)
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        encoder_file, step_file = model_files
        self.encoder = load_graph(ort, directory / encoder_file, options, "the encoder", ["src", "src_len"],
                                  len(self.state_names) + len(self.memory_names))
        self.step = load_graph(ort, directory / step_file, options, "the decoder step",
                               ["prev", *self.state_names, *self.memory_names], 1 + len(self.state_names))

    def encode(self, src: np.ndarray, src_len: np.ndarray) -> tuple[Arrays, Arrays]:
        """Source ids [B, S] and lengths [B] to (memory tensors, first state tensors)."""
        outputs = self.encoder.run(None, {"src": src.astype(np.int64), "src_len": src_len.astype(np.int64)})
        n = len(self.state_names)
        return outputs[n:], outputs[:n]

    def decode_step(self, prev: np.ndarray, state: Arrays, memory: Arrays) -> tuple[np.ndarray, Arrays]:
        """Previous ids [B] to log-probabilities [B, V] and the next state."""
        feed = {"prev": prev.astype(np.int64), **dict(zip(self.state_names, state)),
                **dict(zip(self.memory_names, memory))}
        log_probs, *state = self.step.run(None, feed)
        return log_probs, state

    def select_state(self, state: Arrays, index: np.ndarray) -> Arrays:
        """Entry i of the batch becomes old entry ``index[i]`` (beam search's reorder and repeat)."""
        return [np.take(s, index, axis=axis) for s, axis in zip(state, self.state_axes)]

    def select_memory(self, memory: Arrays, index: np.ndarray) -> Arrays:
        return [np.take(m, index, axis=axis) for m, axis in zip(memory, self.memory_axes)]

    def translate_lines(self, lines: list[str], beam: int = 5, nbest: int = 1, alpha: float = 0.6,
                        batch_tokens: int = 4000, max_length_ratio: float = 2.0,
                        encoded: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Hypotheses for each line, in input order, batched as :func:`nmt.translate.translate_lines`;
        an empty or blank line gets none."""
        if encoded is None:
            encoded = [self.src_tokenizer.encode(line) if line.strip() else [] for line in lines]
        results: list[list[Hypothesis]] = [[] for _ in lines]
        for batch in search_batches(encoded, beam, batch_tokens):
            src_len = np.array([len(encoded[j]) for j in batch], dtype=np.int64)  # [B]
            src = np.full((len(batch), int(src_len.max())), self.src_tokenizer.pad_id, dtype=np.int64)  # [B, S]
            for row, j in enumerate(batch):
                src[row, : src_len[row]] = encoded[j]
            if beam == 1 and nbest == 1:
                hyps = [[h] for h in greedy_search(self, src, src_len, max_length_ratio)]
            else:
                hyps = beam_search(self, src, src_len, beam, alpha, nbest, max_length_ratio)
            for j, h in zip(batch, hyps):
                results[j] = h
        return results


def load_engine(run_dir: Path, onnx_dir: Path | None = None, checkpoint: str = "best",
                device: str = "auto") -> OnnxEngine:
    """The engine of ``nmt translate --engine onnx``: the export in ``onnx_dir``, default ``RUN/onnx``.

    The export holds the weights of the checkpoint it was made from, and runs on the CPU: another
    ``--checkpoint`` or a GPU ``--device`` is an error rather than silently not used."""
    if checkpoint != "best":
        raise UserError("--checkpoint", "--engine onnx uses the checkpoint the export was made from; "
                                        "export another with nmt export --checkpoint")
    if device not in ("auto", "cpu"):
        raise UserError("--device", f"--engine onnx runs on the CPU, got {device!r}")
    return OnnxEngine(Path(onnx_dir) if onnx_dir is not None else Path(run_dir) / "onnx")


# --- search, as nmt.search (the rules both share: nmt.search_rules) -------------------------------

def max_lengths(src_len: np.ndarray, ratio: float) -> np.ndarray:
    """The longest output per sentence, ``int(src_len * ratio) + 10``, computed in float32 as torch does."""
    return (np.asarray(src_len).astype(np.float32) * np.float32(ratio)).astype(np.int64) + 10


def greedy_search(model, src: np.ndarray, src_len: np.ndarray, max_length_ratio: float = 2.0) -> list[Hypothesis]:
    """The most probable token at each step until EOS or the length limit; step for step
    :func:`nmt.search.greedy_search`: a sentence leaves the batch at the step it ends."""
    batch = src.shape[0]
    limits = max_lengths(src_len, max_length_ratio)  # [B]
    memory, state = model.encode(src, src_len)
    prev = np.full(batch, model.bos_id, dtype=np.int64)  # the live rows' last tokens
    live = np.arange(batch)  # the sentence of each live row
    tokens: list[list[int]] = [[] for _ in range(batch)]
    log_prob = np.zeros(batch, dtype=np.float32)
    for t in range(int(limits.max())):
        log_probs, state = model.decode_step(prev, state, memory)  # [n, V]
        prev = log_probs.argmax(axis=-1)  # [n]
        best_lp = np.take_along_axis(log_probs, prev[:, None], axis=1)[:, 0]  # [n]
        keep = greedy_step(live, prev, best_lp, tokens, log_prob, limits, t, model.eos_id)
        if len(keep) == 0:
            break
        if len(keep) < len(live):  # drop the sentences that ended from the batch
            prev, live = prev[keep], live[keep]
            state, memory = model.select_state(state, keep), model.select_memory(memory, keep)
    return [Hypothesis(row, lp, lp) for row, lp in zip(tokens, log_prob.tolist())]


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row, largest first, and their column indices: [N, k] each."""
    index = np.argpartition(-values, k - 1, axis=1)[:, :k]  # [N, k], unordered
    chosen = np.take_along_axis(values, index, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    return np.take_along_axis(chosen, order, axis=1), np.take_along_axis(index, order, axis=1)


def beam_search(model, src: np.ndarray, src_len: np.ndarray, beam_size: int = 5, alpha: float = 0.6,
                nbest: int = 1, max_length_ratio: float = 2.0) -> list[list[Hypothesis]]:
    """Batched beam search with a GNMT length penalty; the ``nbest`` best per sentence.

    Step for step :func:`nmt.search.beam_search`: finished sentences leave the batch as soon as no
    live hypothesis can beat their ``nbest`` finished ones."""
    batch, k = src.shape[0], beam_size
    limits = max_lengths(src_len, max_length_ratio).tolist()
    memory, state = model.encode(src, src_len)
    expand = np.repeat(np.arange(batch), k)  # [B*K]
    memory, state = model.select_memory(memory, expand), model.select_state(state, expand)
    tokens = np.full((batch * k, 1), model.bos_id, dtype=np.int64)  # [B*K, 1]
    scores = np.zeros((batch, k), dtype=np.float32)
    scores[:, 1:] = -np.inf  # all beams start identical: keep one
    active = list(range(batch))  # original sentence index of each row group
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for t in range(max(limits)):
        n = len(active)
        log_probs, state = model.decode_step(tokens[:, -1], state, memory)  # [n*K, V]
        vocab = log_probs.shape[-1]
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(n, k * vocab)  # [n, K*V]
        top_scores, top_index = top_k(candidates, 2 * k)  # [n, 2K]
        tokens, order, keep = beam_step(tokens, top_scores, top_index, vocab, model.eos_id, active, finished,
                                        limits, t, alpha, nbest)
        if not keep:
            break
        scores, chosen = np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top_index, order, axis=1)
        state = model.select_state(state, ((np.arange(n) * k)[:, None] + chosen // vocab).reshape(-1))
        if len(keep) < n:  # drop finished sentences from the batch
            kept = np.array(keep)
            rows_kept = (kept[:, None] * k + np.arange(k)).reshape(-1)
            scores = scores[kept]
            state, memory = model.select_state(state, rows_kept), model.select_memory(memory, rows_kept)
            active = [active[r] for r in keep]
    return [sorted(hyps, key=lambda h: -h.score)[:nbest] for hyps in finished]
