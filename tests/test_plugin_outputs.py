"""What plugins return is checked where the core receives it (:mod:`nmt.plugin_checks`).

A plugin that breaks its contract at run time must be one line naming it (kind, name, origin) and
what was expected, with a non-zero exit and nothing already written lost; never a torch error that
names no plugin, nor a silently wrong result (empty translations, NaN in JSON, shifted alignments,
a corpus blamed as damaged). The broken plugins here wrap the built-in ones of the shared trained
run, each breaking one thing, and are registered into a copy of the registry for one test.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from conftest import reverse_recipe, write_recipe, write_reverse_corpus  # noqa: E402
from reliability_support import reliability_data, run_cli, trained_run  # noqa: E402,F401

import nmt  # noqa: E402
import nmt.score  # noqa: E402
import nmt.translate  # noqa: E402
from nmt import registry, search  # noqa: E402
from nmt.contracts import EncoderOutput  # noqa: E402
from nmt.errors import PluginError  # noqa: E402
from nmt.plugin_checks import plugin_label  # noqa: E402
from nmt.runs import load_run  # noqa: E402
from nmt_builtin.simple_tokenizers import WhitespaceTokenizer  # noqa: E402
from pydantic import BaseModel  # noqa: E402

LINES = ["e2 a2 c0", "d3 d2", "f0 d0 b2 a3"]


class Options(BaseModel):
    """No recipe options: the test sets ``mode`` on the instance."""


class BrokenEncoder(nn.Module):
    """Around a working encoder, returns what its ``mode`` breaks."""

    Config = Options
    output_size: int

    def __init__(self, config, input_size):
        super().__init__()

    @classmethod
    def around(cls, inner, mode):
        module = cls(None, 0)
        module.inner, module.output_size, module.mode = inner, inner.output_size, mode
        return module

    def forward(self, inputs, lengths):
        out = self.inner(inputs, lengths)
        s, k, p, r = out.states, out.mask, out.pooled, out.recurrent
        return {
            "nan": lambda: EncoderOutput(s * float("nan"), k, p, r),
            "mask_all_false": lambda: EncoderOutput(s, torch.zeros_like(k), p, r),
            "wider": lambda: EncoderOutput(torch.cat([s, s[..., :3]], -1), k, p, r),
            "tuple": lambda: (s, k, p, r),
            "mask_float": lambda: EncoderOutput(s, k.float(), p, r),
            "float64": lambda: EncoderOutput(s.double(), k, p.double(), r.double()),
            "batch": lambda: EncoderOutput(s[:-1], k[:-1], p[:-1], r[:, :-1]),
            "mask_none": lambda: EncoderOutput(s, None, p, r),
            "mask_short": lambda: EncoderOutput(s, k[:, :-1], p, r),
            "pooled_narrow": lambda: EncoderOutput(s, k, p[:, :-2], None),
            "recurrent_narrow": lambda: EncoderOutput(s, k, p, r[..., :-2]),
        }[self.mode]()


class BrokenAttention(nn.Module):
    """Around a working attention, returns what its ``mode`` breaks."""

    Config = Options

    def __init__(self, config, query_size, key_size):
        super().__init__()

    @classmethod
    def around(cls, inner, mode):
        module = cls(None, 0, 0)
        module.inner, module.mode = inner, mode
        return module

    def prepare(self, keys):
        return self.inner.prepare(keys)

    def forward(self, query, keys, values, mask):
        c, w = self.inner(query, keys, values, mask)
        return {
            "weights_short": lambda: (c, w[:, :-1]),
            "weights_shifted": lambda: (c, torch.cat([torch.zeros_like(w), w], 1)),
            "weights_nan": lambda: (c, w * float("nan")),
            "weights_none": lambda: (c, None),
            "context_narrow": lambda: (c[:, :-1], w),
            "context_wide": lambda: (torch.cat([c, c], -1), w),
        }[self.mode]()


class BrokenDecoder(nn.Module):
    """Around a working decoder, returns what its ``mode`` breaks."""

    Config = Options
    output_size: int

    def __init__(self, config, input_size, encoder_output_size, attention_factory):
        super().__init__()

    @classmethod
    def around(cls, inner, mode):
        module = cls(None, 0, 0, None)
        module.inner, module.output_size, module.mode = inner, inner.output_size, mode
        return module

    def init_state(self, encoded):
        return self.inner.init_state(encoded)

    def prepare_memory(self, encoded):
        return self.inner.prepare_memory(encoded)

    def step(self, input_emb, state, memory):
        o, st, w = self.inner.step(input_emb, state, memory)
        return {"step_wide": (torch.cat([o, o[:, :1]], -1), st, w), "step_nan": (o * float("nan"), st, w),
                "step_two": (o, st)}.get(self.mode, (o, st, w))

    def forward(self, inputs, state, memory):
        o, st, a = self.inner(inputs, state, memory)
        return {"forward_short": (o[:, :-1], st, a)}.get(self.mode, (o, st, a))

    def select_state(self, state, index):
        return None if self.mode == "select_none" else self.inner.select_state(state, index)

    def select_memory(self, memory, index):
        return self.inner.select_memory(memory, index)


class BrokenTokenizer(WhitespaceTokenizer):
    """A whitespace tokenizer whose ``mode`` breaks encode or decode."""

    mode = "ok"

    def encode(self, text):
        ids = super().encode(text)
        return {"empty": [], "negative": [-1] + ids[1:], "too_large": ids + [len(self)],
                "str": [str(i) for i in ids]}.get(self.mode, ids)

    def decode(self, ids):
        text = super().decode(ids)
        return {"newline": text.replace(" ", "\n"), "carriage_return": text.replace(" ", "\r"),
                "int": 42}.get(self.mode, text)


@pytest.fixture(autouse=True)
def broken_plugins(monkeypatch):
    """The broken plugins, registered into a copy of the registry for one test."""
    registry.discover()
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    for kind, name, cls in (("encoder", "broken_enc", BrokenEncoder), ("attention", "broken_attn", BrokenAttention),
                            ("decoder", "broken_dec", BrokenDecoder), ("tokenizer", "broken_tok", BrokenTokenizer)):
        nmt.register(kind, name)(cls)


@pytest.fixture
def task(trained_run):
    return load_run(trained_run, device="cpu")


def broken(task, encoder=None, attention=None, decoder=None, src_tok=None, tgt_tok=None):
    """``task`` with the named parts broken by these modes (None: left working)."""
    if encoder:
        task.encoder = BrokenEncoder.around(task.encoder, encoder)
    if attention:
        task.decoder.attention = BrokenAttention.around(task.decoder.attention, attention)
    if decoder:
        task.decoder = BrokenDecoder.around(task.decoder, decoder)
    for name, mode in (("src_tokenizer", src_tok), ("tgt_tokenizer", tgt_tok)):
        if mode:
            tokenizer = copy.copy(getattr(task, name))
            tokenizer.__class__, tokenizer.mode = BrokenTokenizer, mode
            setattr(task, name, tokenizer)
    return task


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmt: "), err
    assert "Traceback" not in err and "run with --debug" not in err, err  # a PluginError, not a crash
    return lines[0]


def translate_cli(capsys, monkeypatch, task, tmp_path, *options) -> tuple[int, str, str, Path]:
    """``nmt translate`` of LINES with ``task`` as the loaded model, into an output holding an older one."""
    monkeypatch.setattr(nmt.translate, "load_run", lambda *args, **kwargs: task)
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("".join(line + "\n" for line in LINES))
    output.write_text("previous good output\n")
    code, out, err = run_cli(capsys, "translate", "--run", tmp_path, "-i", source, "-o", output, *options)
    return code, out, err, output


# --- NaN and infinity ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nan", "mask_all_false"])
@pytest.mark.parametrize("beam", ["1", "3"])
def test_non_finite_scores_are_refused_and_the_old_output_stays(task, mode, beam, capsys, monkeypatch, tmp_path):
    code, _, err, output = translate_cli(capsys, monkeypatch, broken(task, encoder=mode), tmp_path, "--beam", beam)
    assert code == 2
    line = one_line_error(err)
    assert "the model's scores are not finite" in line and f"encoder 'broken_enc' ({__file__})" in line
    assert "attention 'bahdanau' (nmt " in line and "decoder 'rnn' (nmt " in line
    assert output.read_text() == "previous good output\n"


def test_a_decoder_step_giving_nan_is_refused(task):
    src = torch.tensor([[5, 6, 7]])
    with pytest.raises(PluginError, match="the model's scores are not finite .*decoder 'broken_dec'"):
        search.beam_search(broken(task, decoder="step_nan"), src, torch.tensor([3]), beam_size=3)


def test_score_refuses_non_finite_scores(task, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(nmt.score, "load_run", lambda *args, **kwargs: broken(task, encoder="mask_all_false"))
    (tmp_path / "s.src").write_text("".join(line + "\n" for line in LINES))
    (tmp_path / "s.tgt").write_text("".join(" ".join(reversed(line.split())) + "\n" for line in LINES))
    monkeypatch.setattr(nmt.score, "input_token_limit", lambda run_dir, limit: 400)  # no recipe in tmp_path
    code, out, err = run_cli(capsys, "score", "--run", tmp_path, "--src", tmp_path / "s.src",
                             "--tgt", tmp_path / "s.tgt", "--json")
    assert code == 2 and out == ""  # before: "logprob": NaN (not JSON), exit 0
    assert "the model's scores are not finite (encoder 'broken_enc'" in one_line_error(err)


NAN_IN_EVAL = '''
from nmt.contracts import EncoderOutput
from nmt.registry import register
from nmt_builtin.rnn_encoders import GRUEncoder


@register("encoder", "nan_in_eval")
class NanInEval(GRUEncoder):
    """A GRU encoder whose states are NaN in eval mode only: training goes well, validation cannot."""

    def forward(self, inputs, lengths, initial_state=None):
        out = super().forward(inputs, lengths, initial_state)
        return out if self.training else EncoderOutput(out.states * float("nan"), out.mask, out.pooled, out.recurrent)
'''


def tiny_recipe(tmp_path: Path, **sections) -> Path:
    data = write_reverse_corpus(tmp_path / "data", n_train=60, n_dev=8)
    model = {"embedding": {"size": 8}, "encoder": {"name": "gru", "hidden_size": 8},
             "decoder": {"name": "rnn", "hidden_size": 16}, **sections.pop("model", {})}
    trainer = {"max_steps": 2, "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
               "limit_val_batches": 1, "val_check_interval": 2, "num_sanity_val_steps": 0}
    return write_recipe(tmp_path / "recipe.yaml", reverse_recipe(data, model=model, trainer=trainer, **sections))


def test_a_non_finite_validation_loss_fails_training(tmp_path, capsys):
    plugin = tmp_path / "nan_in_eval.py"
    plugin.write_text(NAN_IN_EVAL)
    recipe = tiny_recipe(tmp_path, model={"encoder": {"name": "nan_in_eval", "hidden_size": 8}})
    code, _, err = run_cli(capsys, "--plugin", plugin, "train", recipe, "--run-dir", tmp_path / "run")
    assert code != 0, err  # before: "finished ... best val/bleu 0", exit 0, val/loss nan in metrics.csv
    line = [line for line in err.splitlines() if line.startswith("nmt:")][-1]
    assert "validation diverged: loss is nan at step 2" in line and f"encoder 'nan_in_eval' ({plugin})" in line


# --- a line break in decode()'s text ----------------------------------------------------------

@pytest.mark.parametrize("mode,shown", [("newline", "\\n"), ("carriage_return", "\\r")])
def test_decode_with_a_line_break_is_refused(task, mode, shown, capsys, monkeypatch, tmp_path):
    code, _, err, output = translate_cli(capsys, monkeypatch, broken(task, tgt_tok=mode), tmp_path, "--beam", "1")
    assert code == 2  # before: 3 input lines, 7 output lines, exit 0
    line = one_line_error(err)
    assert line.startswith(f"nmt: tokenizer 'broken_tok' ({__file__}): {tmp_path / 'in.txt'}:")
    assert f"decode returned a line break ('{shown}')" in line
    assert output.read_text() == "previous good output\n"


# --- attention weights ----------------------------------------------------------------------

@pytest.mark.parametrize("mode,problem", [
    ("weights_short", "weights must be [3, 3], got [3, 2]"),
    ("weights_shifted", "weights must be [3, 3], got [3, 6]"),
    ("weights_none", "weights must be [3, 3], got None"),
    ("weights_nan", "weights are not finite (NaN or infinite), as reported by decoder 'rnn'"),
])
@pytest.mark.parametrize("beam", [1, 3])
def test_attention_weights_for_alignments_are_checked(task, mode, problem, beam):
    src = torch.tensor([[5, 6, 7]])
    model = broken(task, attention=mode)
    with pytest.raises(PluginError) as info:
        if beam == 1:
            search.greedy_search(model, src, torch.tensor([3]), attention=True)
        else:
            search.beam_search(model, src, torch.tensor([3]), beam_size=beam, attention=True)
    assert info.value.where == f"attention 'broken_attn' ({__file__})"
    assert problem.replace("[3, 3]", f"[{beam}, 3]").replace("[3, 2]", f"[{beam}, 2]").replace(
        "[3, 6]", f"[{beam}, 6]") in info.value.what


def test_the_cli_names_the_attention_of_bad_alignments(task, capsys, monkeypatch, tmp_path):
    code, _, err, output = translate_cli(capsys, monkeypatch, broken(task, attention="weights_shifted"), tmp_path,
                                         "--alignments")
    assert code == 2  # before: alignments shifted by one source piece, exit 0
    assert one_line_error(err).startswith(f"nmt: attention 'broken_attn' ({__file__}): weights must be [")
    assert output.read_text() == "previous good output\n"


# --- token ids out of range, none for a line with text --------------------------------

BAD_IDS = '''
from nmt.registry import register
from nmt_builtin.simple_tokenizers import WhitespaceTokenizer


@register("tokenizer", "bad_ids")
class BadIds(WhitespaceTokenizer):
    """Whitespace pieces, with one id broken as MODE says."""

    def encode(self, text):
        ids = super().encode(text)
        return {"negative": [-1] + ids[1:], "too_large": ids + [len(self)], "empty": [],
                "nested": [ids]}.get("MODE", ids)

    def __len__(self):
        return 2 if "MODE" == "len_small" else len(self.tokens)
'''


@pytest.mark.parametrize("mode,problem", [
    ("negative", "encode returned id -1; ids must be in 0..27 (len(tokenizer) is 28)"),
    ("too_large", "encode returned id 28; ids must be in 0..27 (len(tokenizer) is 28)"),
    ("len_small", "ids must be in 0..1 (len(tokenizer) is 2)"),
    ("empty", "encode returned no ids for a non-empty line"),
    ("nested", "encode must return a list of int ids for each line"),  # before: a TypeError from numpy
])
def test_prepare_names_the_tokenizer_of_bad_ids(mode, problem, tmp_path, capsys):
    plugin = tmp_path / "bad_ids.py"
    plugin.write_text(BAD_IDS.replace("MODE", mode))
    recipe = tiny_recipe(tmp_path, data={"tokenizer": {"name": "bad_ids"}})
    code, _, err = run_cli(capsys, "--plugin", plugin, "prepare", recipe, "--run-dir", tmp_path / "run")
    assert code == 2
    line = one_line_error(err)  # before: "corpus/src-00000.bin: damaged: token id 65,535 ..." or "300 lines dropped"
    assert line.startswith(f"nmt: tokenizer 'bad_ids' ({plugin}): {tmp_path / 'data' / 'train.src'}:1: ")
    assert problem in line and "damaged" not in line


@pytest.mark.parametrize("mode,problem", [
    ("empty", "encode returned no ids for a non-empty line"),
    ("negative", "encode returned id -1; ids must be in 0..27 (len(tokenizer) is 28)"),
    ("too_large", "encode returned id 28; ids must be in 0..27 (len(tokenizer) is 28)"),
    ("str", "encode must return a list of int, got a list holding str '15'"),
])
def test_translate_names_the_tokenizer_of_bad_ids(task, mode, problem, capsys, monkeypatch, tmp_path):
    code, _, err, output = translate_cli(capsys, monkeypatch, broken(task, src_tok=mode), tmp_path)
    assert code == 2  # before, for empty: every line translated as nothing, exit 0
    assert one_line_error(err) == f"nmt: tokenizer 'broken_tok' ({__file__}): {tmp_path / 'in.txt'}:1: {problem}"
    assert output.read_text() == "previous good output\n"


def test_a_blank_line_may_encode_as_nothing(task):
    task = broken(task, src_tok="empty")
    assert nmt.translate.encode_lines(task, ["", "   ", "\u200b"]) == [[], [], []]  # no letter nor digit there


# --- the shapes, dtypes and types of the network plugins' outputs -----------------------------

@pytest.mark.parametrize("mode,problem", [
    ("wider", "states must be [1, 3, 128] float32, got [1, 3, 131]"),
    ("tuple", "forward must return an nmt.contracts.EncoderOutput, got tuple"),
    ("mask_float", "mask must be [1, 3] bool, got float32"),
    ("float64", "states must be [1, 3, 128] float32, got float64"),
    ("batch", "states must be [1, 3, 128] float32, got [0, 3, 128]"),
    ("mask_none", "mask must be [1, 3] bool, got None"),
    ("mask_short", "mask must be [1, 3] bool, got [1, 2]"),
    ("pooled_narrow", "pooled must be [1, 128] float32, got [1, 126]"),
    ("recurrent_narrow", "recurrent must be None, a tensor [L, 1, 128] or a pair (h, c) of them, got [1, 1, 126] float32"),
])
def test_encoder_outputs_are_checked(task, mode, problem):
    with pytest.raises(PluginError) as info:
        broken(task, encoder=mode).encode(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    assert info.value.message == f"encoder 'broken_enc' ({__file__}): {problem}"


@pytest.mark.parametrize("mode,problem", [
    ("context_narrow", "context must be [1, 128] float32, got [1, 127]"),
    ("context_wide", "context must be [1, 128] float32, got [1, 256]"),
])
def test_attention_outputs_are_named_when_the_decoder_fails_on_them(task, mode, problem):
    with pytest.raises(PluginError) as info:  # before: "mat1 and mat2 shapes cannot be multiplied"
        search.greedy_search(broken(task, attention=mode), torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    assert info.value.message == f"attention 'broken_attn' ({__file__}): {problem}"


def test_decoder_outputs_are_checked(task):
    src, src_len = torch.tensor([[5, 6, 7]]), torch.tensor([3])
    label = f"decoder 'broken_dec' ({__file__})"
    with pytest.raises(PluginError, match=r"step's output must be \[1, 128\] float32, got \[1, 129\]"):
        search.greedy_search(broken(load_run(task.run_dir, device="cpu"), decoder="step_wide"), src, src_len)
    with pytest.raises(PluginError, match="step must return"):
        search.greedy_search(broken(load_run(task.run_dir, device="cpu"), decoder="step_two"), src, src_len)
    with pytest.raises(PluginError, match="select_state returned None instead of a state") as info:
        search.beam_search(broken(load_run(task.run_dir, device="cpu"), decoder="select_none"), src, src_len)
    assert info.value.where == label
    batch = {"src": src, "src_len": src_len, "tgt_in": torch.tensor([[2, 7, 6, 5]]), "tgt_out": torch.tensor([[7, 6, 5, 3]])}
    with pytest.raises(PluginError, match=r"forward's outputs must be \[1, 4, 128\] float32, got \[1, 3, 128\]"):
        broken(task, decoder="forward_short").target_log_probs(batch)


def test_decode_must_return_text(task):
    with pytest.raises(PluginError, match="validation line 1: decode must return str, got int"):
        task = broken(task, tgt_tok="int")
        task._valid_outputs = []
        task.validation_step({"src": torch.tensor([[5, 6, 7]]), "src_len": torch.tensor([3]),
                              "tgt_in": torch.tensor([[2, 7, 6, 5]]), "tgt_out": torch.tensor([[7, 6, 5, 3]]),
                              "ids": torch.tensor([0])}, 0)


def test_built_in_plugins_are_named_by_their_distribution(task):
    assert plugin_label("encoder", task.encoder).startswith("encoder 'gru' (nmt ")
    assert plugin_label("attention", task.decoder.attention).startswith("attention 'bahdanau' (nmt ")
