"""``nmt export --format onnx`` and the onnxruntime engine (``nmt translate --engine onnx``).

The engine must translate as the torch search does: greedy line for line, beam search on nearly
every line (onnxruntime adds floats in another order than torch, so two hypotheses whose scores
differ only in the last bits can swap places; on the reverse task that almost never happens).
Skipped where onnxruntime or onnx is not installed (``pip install 'nmt[onnx]'``).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from reliability_support import error_lines, reliability_data, run_cli, trained_run  # noqa: E402,F401

from nmt import onnx_engine, search  # noqa: E402
from nmt.errors import RunError  # noqa: E402
from nmt.translate import search_batches  # noqa: E402

WORDS = "a0 a1 a2 a3 b0 b1 b2 b3 c0 c1 c2 c3 d0 d1 d2 d3 e0 e1 e2 e3 f0 f1 f2 f3".split()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run) -> Path:
    """A copy of the trained run with its ONNX export in the default place, RUN/onnx."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("onnx") / "run"))
    code = _cli("export", "--run", run, "--format", "onnx")
    assert code == 0 and (run / "onnx" / "engine.json").is_file()
    return run


def _cli(*argv) -> int:
    from nmt.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def source(tmp_path_factory, reliability_data) -> Path:
    """The dev sentences, plus an empty line, unknown words and lines far longer than any training one."""
    rng = random.Random(3)
    lines = (reliability_data / "dev.src").read_text().splitlines()
    lines += ["", "zz a0 qq", *(" ".join(rng.choices(WORDS, k=n)) for n in (15, 25, 40))]
    path = tmp_path_factory.mktemp("source") / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def translate(capsys, run: Path, source: Path, *options) -> list[str]:
    code, out, err = run_cli(capsys, "translate", "--run", run, "-i", source, *options)
    assert code == 0, err
    return out.splitlines()


def test_greedy_output_equals_torch_line_for_line(capsys, exported, source):
    torch_lines = translate(capsys, exported, source, "--beam", "1")
    onnx_lines = translate(capsys, exported, source, "--beam", "1", "--engine", "onnx")
    assert len(onnx_lines) == len(torch_lines) == len(source.read_text().splitlines())
    assert sum(bool(line) for line in torch_lines) > 100  # the model translates: this compares real output
    assert onnx_lines == torch_lines


@pytest.fixture(scope="module")
def never_ends(tmp_path_factory, trained_run) -> Path:
    """The trained run with EOS made improbable (its output bias -1e4), exported: every translation
    runs to the length cap, so the cap rule decides every output length."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("never-ends") / "run"))
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state["state_dict"]["output.bias"][3] = -1e4  # EOS_ID
        torch.save(state, checkpoint)
    assert _cli("export", "--run", run) == 0
    return run


@pytest.mark.parametrize("beam", ["1", "3"])
def test_length_cap_ends_translations_as_torch(capsys, never_ends, tmp_path, beam):
    """At ratio 0.7, lines of 90 and 170 words are where float64 (62, 118) and float32 (63, 119) part."""
    rng = random.Random(5)
    lengths = [1, 4, 9, 90, 170]
    source = tmp_path / "in.txt"
    source.write_text("".join(" ".join(rng.choices(WORDS, k=n)) + "\n" for n in lengths))
    options = ("--beam", beam, "--max-length-ratio", "0.7")
    torch_lines = translate(capsys, never_ends, source, *options)
    assert [len(line.split()) for line in torch_lines] == search.max_lengths(torch.tensor(lengths), 0.7).tolist()
    assert translate(capsys, never_ends, source, *options, "--engine", "onnx") == torch_lines


def test_beam_output_equals_torch_on_nearly_every_line(capsys, exported, source):
    torch_lines = translate(capsys, exported, source, "--beam", "4")
    onnx_lines = translate(capsys, exported, source, "--beam", "4", "--engine", "onnx")
    assert len(onnx_lines) == len(torch_lines)
    same = sum(a == b for a, b in zip(onnx_lines, torch_lines))
    assert same >= 0.95 * len(torch_lines), f"{same} of {len(torch_lines)} lines equal"


def test_nbest_hypotheses_and_scores_match_torch(exported, source):
    from nmt.runs import load_run
    from nmt.translate import translate_lines

    lines = source.read_text().splitlines()
    task = load_run(exported, device="cpu")
    engine = onnx_engine.OnnxEngine(exported / "onnx", threads=1)
    expected = translate_lines(task, lines, 5, 3, 1.0, 500, 1.5)
    found = engine.translate_lines(lines, beam=5, nbest=3, alpha=1.0, batch_tokens=500, max_length_ratio=1.5)
    pairs = [(a, b) for want, got in zip(expected, found) for a, b in zip(want, got)]
    assert len(pairs) > 300 and sum(len(h) for h in expected) == sum(len(h) for h in found)
    same = [(a, b) for a, b in pairs if a.tokens == b.tokens]
    assert len(same) >= 0.95 * len(pairs)
    assert max(abs(a.score - b.score) + abs(a.log_prob - b.log_prob) for a, b in same) < 1e-3


def test_engine_translates_with_torch_unimportable(capsys, exported, source):
    """The runner needs no torch: the engine runs in a process where ``import torch`` fails."""
    program = (
        "import sys; sys.modules['torch'] = sys.modules['pytorch_lightning'] = None\n"
        "from nmt.onnx_engine import OnnxEngine\n"
        f"engine = OnnxEngine({str(exported / 'onnx')!r})\n"
        f"lines = open({str(source)!r}).read().splitlines()\n"
        "for hyps in engine.translate_lines(lines, beam=1):\n"
        "    print(engine.tgt_tokenizer.decode(hyps[0].tokens) if hyps else '')\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == translate(capsys, exported, source, "--beam", "1")


def test_export_elsewhere_is_found_with_onnx_option(capsys, exported, source, tmp_path):
    assert _cli("export", "--run", exported, "-o", tmp_path / "elsewhere") == 0
    info = json.loads((tmp_path / "elsewhere" / "engine.json").read_text())
    assert (info["bos_id"], info["eos_id"], info["pad_id"]) == (2, 3, 0)
    assert [a["batch_axis"] for a in info["state"]] == [1, 0]  # GRU hidden [L, B, H], previous output [B, H]
    expected = translate(capsys, exported, source, "--beam", "1", "--engine", "onnx")
    assert translate(capsys, exported, source, "--beam", "1", "--engine", "onnx",
                     "--onnx", tmp_path / "elsewhere") == expected


def test_export_of_a_non_translation_run_is_one_line_error(capsys, tmp_path):
    run = tmp_path / "classify-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": 1, "nmt_version": "0.1.0"}))
    (run / "recipe.yaml").write_text("name: lengths\ntask: classify\ndata: {train: t.tsv, valid: t.tsv}\n")
    code, out, err = run_cli(capsys, "export", "--run", run, "--format", "onnx")
    assert code == 2 and error_lines(err) == [
        f"nmt: {run}: task 'classify' does not translate; only translation (seq2seq) runs export to ONNX"]
    assert not (run / "onnx").exists()


def test_translate_with_onnx_engine_but_no_export_is_one_line_error(capsys, trained_run, source):
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "-i", source, "--engine", "onnx")
    assert code == 2 and out == ""
    assert error_lines(err) == [f"nmt: {trained_run / 'onnx'}: no ONNX export here (no engine.json); "
                                "write one with nmt export --run RUN --format onnx"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _without_bos_id(path: Path) -> None:
    info = json.loads(path.read_text())
    del info["bos_id"]
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("damage, file, words", [
    (lambda d: _without_bos_id(d / "engine.json"), "engine.json", "bos_id is missing or not an integer"),
    (lambda d: _truncate(d / "encoder.onnx"), "encoder.onnx", "not a readable ONNX graph (InvalidProtobuf"),
    (lambda d: shutil.copy(d / "encoder.onnx", d / "decoder_step.onnx"), "decoder_step.onnx",
     "not the decoder step of this export (inputs src, src_len, expected prev,"),
], ids=["engine-json-missing-key", "truncated-encoder", "encoder-as-decoder-step"])
def test_a_damaged_export_is_one_line_naming_the_file(capsys, exported, source, tmp_path, damage, file, words):
    export = Path(shutil.copytree(exported / "onnx", tmp_path / "onnx"))
    damage(export)
    code, out, err = run_cli(capsys, "translate", "--run", exported, "-i", source, "--engine", "onnx",
                             "--onnx", export)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"nmt: {export / file}: {words}"), err
    assert err.rstrip().endswith("; export the run again (nmt export --run RUN --format onnx)"), err


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(capsys, exported, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    code, out, err = run_cli(capsys, "export", "--run", exported, "-o", tmp_path)
    assert code == 2 and "is not an ONNX export of nmt" in error_lines(err)[0]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_export_refuses_an_earlier_export_that_holds_other_files(capsys, exported, tmp_path):
    """An earlier export with anything else beside it (a user's notes, a Dockerfile) is not replaced:
    the export replaces its folder whole, and would remove them."""
    shutil.copytree(exported / "onnx", tmp_path / "out")
    (tmp_path / "out" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "out" / "notes").mkdir()
    code, out, err = run_cli(capsys, "export", "--run", exported, "-o", tmp_path / "out")
    assert code == 2 and "is not an ONNX export of nmt (holds Dockerfile, notes, " in error_lines(err)[0], err
    assert (tmp_path / "out" / "Dockerfile").read_text() == "FROM scratch\n" and (tmp_path / "out" / "notes").is_dir()


def test_export_refuses_the_current_directory(capsys, exported, tmp_path, monkeypatch):
    """-o . (or a folder above it) in an earlier export: refused, the folder as it was, no temporary left."""
    shutil.copytree(exported / "onnx", tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    for inside, target in ((tmp_path / "out", "."), (tmp_path / "out" / "tokenizer", "..")):
        monkeypatch.chdir(inside)
        code, out, err = run_cli(capsys, "export", "--run", exported, "-o", target)
        assert code == 2 and "is the current directory or holds it" in error_lines(err)[0], err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_a_failed_export_leaves_the_earlier_one_and_no_temporary(capsys, exported, tmp_path, monkeypatch):
    """The earlier export is moved aside only once the new one is complete and checked: an export that
    fails (here its check against torch) leaves it as it was, and nothing beside it."""
    from nmt import onnx_export
    from nmt.errors import RunError

    shutil.copytree(exported / "onnx", tmp_path / "out")
    engine = (tmp_path / "out" / "engine.json").read_bytes()

    def failing_check(task, work):
        assert (work / "engine.json").is_file()
        raise RunError(None, "onnxruntime and torch disagree")
    monkeypatch.setattr(onnx_export, "_check_graphs", failing_check)
    code, out, err = run_cli(capsys, "export", "--run", exported, "-o", tmp_path / "out")
    assert code == 2 and "onnxruntime and torch disagree" in error_lines(err)[0], err
    assert (tmp_path / "out" / "engine.json").read_bytes() == engine and sorted(os.listdir(tmp_path)) == ["out"]


def test_export_under_a_file_is_one_line_error(capsys, exported, tmp_path):
    (tmp_path / "a-file").write_text("x")
    code, out, err = run_cli(capsys, "export", "--run", exported, "-o", tmp_path / "a-file" / "sub")
    assert code == 2 and error_lines(err) == [f"nmt: {tmp_path / 'a-file' / 'sub'}: a parent is not a directory"]
    assert (tmp_path / "a-file").read_text() == "x"


def test_export_refuses_a_link_as_its_folder(capsys, exported, tmp_path):
    """The export replaces its folder whole: a link there would be removed instead of followed."""
    shutil.copytree(exported / "onnx", tmp_path / "real")
    (tmp_path / "out").symlink_to(tmp_path / "real")
    code, out, err = run_cli(capsys, "export", "--run", exported, "-o", tmp_path / "out")
    assert code == 2 and "is a link or not a directory" in error_lines(err)[0], err
    assert (tmp_path / "out").is_symlink() and (tmp_path / "real" / "engine.json").is_file()


def test_export_leaves_the_model_in_eval_mode(trained_run, tmp_path):
    """The exporter restores its wrapper's mode afterwards; a wrapper left in training mode would turn
    dropout on in the model and make the export's own check compare against noise."""
    from nmt.onnx_export import _write_graphs
    from nmt.runs import load_run

    task = load_run(trained_run, device="cpu")
    _write_graphs(task, tmp_path)
    assert not any(module.training for module in task.modules())


@pytest.mark.slow
def test_transformer_encoder_exports_through_torch_export(capsys, reliability_data, tmp_path):
    """A Transformer encoder's attention reshapes get fixed sizes from the TorchScript exporter: the
    export notices and takes the torch.export-based exporter for the encoder (with sentencepiece
    tokenizers, one per side, and dropout that must be off in the export)."""
    pytest.importorskip("onnxscript")
    from conftest import write_recipe
    from reliability_support import small_recipe

    recipe = small_recipe(reliability_data, trainer={"max_epochs": 1},
                          model={"embedding": {"size": 32, "tie_target": True},
                                 "encoder": {"name": "transformer", "hidden_size": 32, "layers": 1, "heads": 2},
                                 "attention": {"name": "bahdanau"},
                                 "decoder": {"name": "rnn", "hidden_size": 32, "dropout": 0.3}},
                          data={"tokenizer": {"name": "sentencepiece", "vocab_size": 40}, "joint_vocab": False})
    path = write_recipe(tmp_path / "transformer.yaml", recipe)
    assert _cli("train", path, "--run-dir", tmp_path / "run") == 0
    assert _cli("export", "--run", tmp_path / "run") == 0
    info = json.loads((tmp_path / "run" / "onnx" / "engine.json").read_text())
    assert info["exporters"] == {"encoder": "dynamo", "decoder_step": "torchscript"}
    source = reliability_data / "dev.src"
    torch_lines = translate(capsys, tmp_path / "run", source, "--beam", "1")
    assert translate(capsys, tmp_path / "run", source, "--beam", "1", "--engine", "onnx") == torch_lines


# --- the parts the engine repeats from the torch side ------------------------------------------

def test_length_cap_is_computed_in_float32_as_torch():
    """int(src_len * ratio) + 10, with the product in float32: in float64 0.7 * 90 is 62.99..., one less."""
    lengths = torch.arange(0, 500)
    for ratio in (0.1, 0.3, 0.7, 1.1, 1.3, 1.5, 2.0, 2 / 3, 9.99):
        expected = search.max_lengths(lengths, ratio).tolist()
        assert onnx_engine.max_lengths(lengths.numpy(), ratio).tolist() == expected


def test_batches_and_budget_are_the_torch_engines():
    assert onnx_engine.search_batches is search_batches


def test_tokenizers_read_from_files_match_the_plugins(tmp_path):
    from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer
    from nmt_builtin.simple_tokenizers import CharacterTokenizer, WhitespaceTokenizer

    rng = random.Random(1)
    texts = [" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far"]) + rng.choice("sxy")
                      for _ in range(rng.randint(1, 8))) for _ in range(300)]
    probes = texts[:20] + ["unseen wörds <s> here", "  spaced   out  "]
    SentencePieceTokenizer.train(SentencePieceTokenizer.Config(vocab_size=40), texts, tmp_path, "sp")
    WhitespaceTokenizer.train(WhitespaceTokenizer.Config(max_size=20), texts, tmp_path, "ws")
    CharacterTokenizer.train(CharacterTokenizer.Config(), texts, tmp_path, "ch")
    for name, prefix, plugin in (("sentencepiece", "sp", SentencePieceTokenizer), ("whitespace", "ws", WhitespaceTokenizer),
                                 ("characters", "ch", CharacterTokenizer)):
        ours, theirs = onnx_engine.load_tokenizer(tmp_path, name, prefix), plugin.load(tmp_path, prefix)
        assert len(ours) == len(theirs)
        for text in probes:
            ids = theirs.encode(text)
            assert ours.encode(text) == ids
            assert ours.decode(ids + [3, 0]) == theirs.decode(ids + [3, 0])


@pytest.mark.parametrize("damage, words", [
    (lambda path: path.write_bytes(b""), "not a sentencepiece model, truncated or corrupt (empty file)"),
    (lambda path: path.write_bytes(path.read_bytes()[:200]), "not a sentencepiece model, truncated or corrupt ("),
    (lambda path: path.unlink(), "sentencepiece model not found"),
], ids=["empty", "truncated", "missing"])
def test_a_damaged_sentencepiece_model_in_an_export_is_one_line_naming_it(tmp_path, damage, words):
    from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer

    texts = [f"the cat sat on mat {i % 7} dogs ran far" for i in range(200)]
    SentencePieceTokenizer.train(SentencePieceTokenizer.Config(vocab_size=40), texts, tmp_path, "src")
    damage(tmp_path / "src.model")
    with pytest.raises(RunError) as caught:
        onnx_engine.load_tokenizer(tmp_path, "sentencepiece", "src")
    message = caught.value.what
    assert caught.value.where == str(tmp_path / "src.model") and message.startswith(words), message
    assert message.endswith("; export the run again (nmt export --run RUN --format onnx)") and "\n" not in message


class ToyModel:
    """A random recurrent scorer in numpy with the decoding protocol (what the engine searches over):
    state [B, D] moves with each token, memory [B, D] is the mean source embedding. EOS is likely
    enough that hypotheses end at all lengths, so early stopping and the length cap both matter."""

    bos_id, eos_id, vocab, size = 2, 3, 9, 16

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(size=(self.vocab, self.size))
        self.recur = rng.normal(size=(self.size, self.size)) / np.sqrt(self.size)
        self.out = rng.normal(size=(self.size, self.vocab)) * 1.5

    def encode(self, src, src_len):
        memory = self.embed[src].sum(axis=1) / src_len[:, None]  # [B, D]
        return [memory], [np.tanh(memory)]

    def decode_step(self, prev, state, memory):
        hidden = np.tanh(state[0] @ self.recur + self.embed[prev] + memory[0])  # [B, D]
        logits = hidden @ self.out  # [B, V]
        logits[:, :3] = -1e4  # pad, unk and bos are never chosen
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return log_probs.astype(np.float32), [hidden]

    def select_state(self, state, index):
        return [s[index] for s in state]

    select_memory = select_state


class ToyTorch:
    """The same model for nmt.search: torch tensors in and out, the same numpy arithmetic inside,
    so both searches see bit-identical log-probabilities."""

    def __init__(self, toy: ToyModel):
        self.toy, self.bos_id, self.eos_id = toy, toy.bos_id, toy.eos_id

    def encode(self, src, src_len):
        return self.toy.encode(src.numpy(), src_len.numpy())

    def decode_step(self, prev, state, memory):
        log_probs, state = self.toy.decode_step(prev.numpy(), state, memory)
        return torch.from_numpy(log_probs), state

    def select_state(self, state, index):
        return self.toy.select_state(state, index.numpy())

    select_memory = select_state


@pytest.mark.parametrize("beam,nbest,alpha", [(1, 1, 0.6), (2, 1, 0.6), (5, 3, 0.6), (4, 2, 0.0), (3, 3, 1.5)])
def test_search_is_nmt_search_step_for_step(beam, nbest, alpha):
    """On identical log-probabilities the numpy search returns what nmt.search returns, scores included."""
    rng = np.random.default_rng(beam)
    for seed in range(4):
        toy = ToyModel(seed)
        src_len = rng.integers(1, 12, size=16)
        src = rng.integers(4, toy.vocab, size=(16, int(src_len.max())))
        src[np.arange(src.shape[1])[None, :] >= src_len[:, None]] = 0
        if beam == 1:
            want = [[h] for h in search.greedy_search(ToyTorch(toy), torch.from_numpy(src), torch.from_numpy(src_len), 0.5)]
            got = [[h] for h in onnx_engine.greedy_search(toy, src, src_len, 0.5)]
        else:
            want = search.beam_search(ToyTorch(toy), torch.from_numpy(src), torch.from_numpy(src_len), beam, alpha, nbest, 0.5)
            got = onnx_engine.beam_search(toy, src, src_len, beam, alpha, nbest, 0.5)
        assert [[(h.tokens, h.log_prob, h.score) for h in hyps] for hyps in got] == \
            [[(h.tokens, h.log_prob, h.score) for h in hyps] for hyps in want]


def test_greedy_search_drops_each_sentence_at_the_step_it_ends():
    """The numpy greedy search decodes only the rows still searching, as nmt.search's does: every row
    it decodes belongs to a sentence that has not ended (its output is as long as its steps so far)."""
    rng, toy = np.random.default_rng(7), ToyModel(7)
    src_len = rng.integers(1, 12, size=16)
    src = rng.integers(4, toy.vocab, size=(16, int(src_len.max())))
    rows, decode_step = [], toy.decode_step
    toy.decode_step = lambda prev, state, memory: rows.append(len(prev)) or decode_step(prev, state, memory)
    hyps = onnx_engine.greedy_search(toy, src, src_len, 0.5)
    lengths = [len(h.tokens) for h in hyps]
    assert len(set(lengths)) > 2
    limits = onnx_engine.max_lengths(src_len, 0.5)
    steps = [n if n == cap else n + 1 for n, cap in zip(lengths, limits.tolist())]  # EOS: one step more
    assert sum(rows) == sum(steps) and rows == sorted(rows, reverse=True)
