"""Runtime checks of what plugins return, so that a plugin breaking its contract is one line naming it.

:mod:`nmt.contracts` checks a plugin's class when it registers; what its methods return can only be
checked when they run. A plugin that returns a tensor of the wrong shape or dtype fails somewhere
downstream with a torch error that names no plugin, or worse, gives a silently wrong result (empty
translations, shifted alignments, NaN in JSON). These checks sit where the core receives a plugin's
output and raise a :class:`~nmt.errors.PluginError` naming the plugin (kind, name and where it came
from, as ``nmt plugins`` lists it) and what was expected.

They read metadata only (type, shape, dtype, device), which costs no device synchronisation; the
values (NaN, infinity) are checked where the core already copies them to the host. Finding who to
blame is the slow part, done only once something is wrong: an attention's output is checked by
running the failed decoder call again with hooks on the attention modules (:func:`blame_attention`),
so no hook slows down the calls that succeed.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from nmt.contracts import EncoderOutput
from nmt.errors import PluginError, TrainingDiverged, shorten
from nmt.registry import describe as plugin_label, registered_entry

NETWORK_KINDS = ("encoder", "attention", "decoder")
LINE_BREAKS = ("\n", "\r")  # what splits the lines of an output file (and Python's universal newlines)


# --- naming a plugin --------------------------------------------------------------------------

def _is_kind(module: Any, kind: str) -> bool:
    return registered_entry(kind, type(module)) is not None


def plugin_modules(model: Any, kind: str) -> list:
    """The modules of ``model`` that are registered plugins of ``kind``, outermost only: a plugin built
    around another (a wrapper, an ensemble's member's parts) is what was asked for, not its parts."""
    if not isinstance(model, torch.nn.Module):
        return []
    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if _is_kind(module, kind) and not any(name.startswith(outer + ".") or outer == "" for outer, _ in found):
            found.append((name, module))
    return [module for _, module in found]


def network_plugins(model: Any, kinds: Iterable[str] = NETWORK_KINDS) -> list[str]:
    """The labels of the registered plugins among ``model``'s modules (each once, by kind): what can
    have produced its scores. An ensemble lists its members' plugins."""
    labels: list[str] = []
    for kind in kinds:
        for module in plugin_modules(model, kind):
            label = plugin_label(kind, module)
            if label not in labels:
                labels.append(label)
    return labels


def _shape(value: Any) -> str:
    """A value as a message shows it: a tensor's shape and dtype, else its type."""
    if isinstance(value, torch.Tensor):
        return f"[{', '.join(map(str, value.shape))}] {str(value.dtype).removeprefix('torch.')}"
    return "None" if value is None else type(value).__name__


def _dims(*sizes: Any) -> str:
    return f"[{', '.join(map(str, sizes))}]"


def _dtype_ok(tensor: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether ``tensor`` has the floating dtype the network computes in: ``like``'s (what it was given),
    or under autocast autocast's dtype or float32 (what autocast's operations return)."""
    if tensor.dtype == like.dtype:
        return True
    device = like.device.type
    return torch.is_autocast_enabled(device) and tensor.dtype in (torch.get_autocast_dtype(device), torch.float32)


def _tensor_problem(name: str, value: Any, sizes: Sequence[int], like: torch.Tensor | None) -> str | None:
    """What keeps ``value`` from being a tensor of ``sizes`` on ``like``'s device and in its dtype
    (bool where ``like`` is None)."""
    dtype = "bool" if like is None else str(like.dtype).removeprefix("torch.")
    expected = f"{name} must be {_dims(*sizes)} {dtype}"
    if not isinstance(value, torch.Tensor):
        return f"{expected}, got {_shape(value)}"
    if value.shape != tuple(sizes):
        return f"{expected}, got {_dims(*value.shape)}"
    if (value.dtype != torch.bool) if like is None else not _dtype_ok(value, like):
        return f"{expected}, got {str(value.dtype).removeprefix('torch.')}"
    if like is not None and value.device != like.device:
        return f"{expected} on {like.device}, got a tensor on {value.device}"
    return None


# --- the encoder ------------------------------------------------------------------------------

def check_encoded(encoder: Any, encoded: Any, inputs: torch.Tensor) -> EncoderOutput:
    """``encoded``, what ``encoder`` returned for ``inputs`` [B, S, E], once it is an
    :class:`EncoderOutput` of states [B, S, D], a bool mask [B, S], pooled [B, D] and a recurrent state
    [L, B, D] (or a pair of them) or None, D the encoder's ``output_size``; else a PluginError."""
    problem = _encoded_problem(encoder, encoded, inputs)
    if problem:
        raise PluginError(plugin_label("encoder", encoder), problem)
    return encoded


def _encoded_problem(encoder: Any, encoded: Any, inputs: torch.Tensor) -> str | None:
    if not isinstance(encoded, EncoderOutput):
        return f"forward must return an nmt.contracts.EncoderOutput, got {_shape(encoded)}"
    batch, length, width = inputs.size(0), inputs.size(1), encoder.output_size
    return (_tensor_problem("states", encoded.states, (batch, length, width), inputs)
            or _tensor_problem("mask", encoded.mask, (batch, length), None)
            or _tensor_problem("pooled", encoded.pooled, (batch, width), inputs)
            or _recurrent_problem(encoded.recurrent, batch, width, inputs))


def _recurrent_problem(recurrent: Any, batch: int, width: int, inputs: torch.Tensor) -> str | None:
    if recurrent is None:
        return None
    parts = recurrent if isinstance(recurrent, tuple) else (recurrent,)
    if len(parts) <= 2 and all(isinstance(p, torch.Tensor) and p.dim() == 3 and p.shape[1:] == (batch, width)
                               and _dtype_ok(p, inputs) and p.device == inputs.device for p in parts):
        return None
    got = _shape(recurrent) if not isinstance(recurrent, tuple) else f"({', '.join(map(_shape, parts))})"
    return f"recurrent must be None, a tensor [L, {batch}, {width}] or a pair (h, c) of them, got {got}"


# --- the decoder and its attention ------------------------------------------------------------

def check_step(decoder: Any, result: Any, input_emb: torch.Tensor, rerun: Callable[[], Any]) -> tuple:
    """``result``, what ``decoder.step`` returned for ``input_emb`` [B, E], once it is (output [B, H],
    a state, weights [B, S]); else a PluginError, naming the attention where it gave the bad weights
    (``rerun()`` repeats the step, see :func:`blame_attention`). Metadata only: this runs every step."""
    if type(result) is not tuple or len(result) != 3:
        raise PluginError(plugin_label("decoder", decoder),
                          f"step must return (output, state, attention weights), got {_tuple_shape(result)}")
    output, state, weights = result
    rows = input_emb.size(0)
    problem = _tensor_problem("step's output", output, (rows, decoder.output_size), input_emb)
    if problem is None and state is None:
        problem = "step returned None as its new state"
    if problem is None and not (isinstance(weights, torch.Tensor) and weights.dim() == 2 and weights.size(0) == rows):
        refuse_weights(decoder, weights, (rows, "S"), rerun)
    if problem:
        raise PluginError(plugin_label("decoder", decoder), problem)
    return result


def check_teacher_forced(decoder: Any, result: Any, inputs: torch.Tensor, source_length: int,
                         rerun: Callable[[], Any]) -> tuple:
    """``result``, what ``decoder(inputs [B, T, E], ...)`` returned, once it is (outputs [B, T, H], a
    state, attention [B, T, S]); else a PluginError (naming the attention where it is at fault)."""
    if not isinstance(result, tuple) or len(result) != 3:
        raise PluginError(plugin_label("decoder", decoder),
                          f"forward must return (outputs, state, attention), got {_tuple_shape(result)}")
    outputs, _, attention = result
    batch, steps = inputs.size(0), inputs.size(1)
    problem = _tensor_problem("forward's outputs", outputs, (batch, steps, decoder.output_size), inputs)
    if problem:
        raise PluginError(plugin_label("decoder", decoder), problem)
    if not (isinstance(attention, torch.Tensor) and attention.shape == (batch, steps, source_length)):
        refuse_weights(decoder, attention, (batch, steps, source_length), rerun, "forward's attention")
    return result


def check_state(decoder: Any, state: Any, method: str) -> Any:
    """``state`` unless it is None, which no decoder state is (``select_state`` returning None lost it)."""
    if state is None:
        raise PluginError(plugin_label("decoder", decoder), f"{method} returned None instead of a state")
    return state


def refuse_weights(model: Any, weights: Any, expected: Sequence, rerun: Callable[[], Any] | None,
                   name: str = "attention weights") -> None:
    """Raise a PluginError for attention weights [``expected``] that came back as ``weights``: naming
    the attention when its own output was wrong when ``rerun()`` repeats the call, else the decoder(s)
    of ``model`` (a decoder, a task or an ensemble), which reported them."""
    if rerun is not None:
        blame_attention(model, rerun)
    got = _dims(*weights.shape) if isinstance(weights, torch.Tensor) else _shape(weights)
    if _is_kind(model, "decoder"):
        where = plugin_label("decoder", model)
    else:  # a task or an ensemble: its decoder(s)
        where = ", ".join(network_plugins(model, ["decoder"])) or "decoder"
    raise PluginError(where, f"{name} must be {_dims(*expected)}, got {got}")


def blame_attention(model: Any, rerun: Callable[[], Any]) -> None:
    """Run ``rerun()`` (a decoder call that failed or returned something wrong) again with every
    attention module of ``model`` checked as it returns, and raise a PluginError naming the first one
    that broke its contract (context [B, V], weights [B, S] for values [B, S, V]). Returns when none
    did, whatever ``rerun`` does otherwise: the caller then blames the decoder or re-raises."""
    attentions = plugin_modules(model, "attention")
    if not attentions:
        return

    def check(module, args, kwargs, output):
        problem = _attention_problem(args, kwargs, output)
        if problem:
            error = PluginError(plugin_label("attention", module), problem)
            error.from_attention_check = True  # the decoder's own PluginErrors are the caller's to report
            raise error

    handles = [m.register_forward_hook(check, with_kwargs=True) for m in attentions]
    try:
        with torch.no_grad():
            rerun()
    except PluginError as error:  # also raised by a blame_attention within rerun (the task's own, on failure)
        if getattr(error, "from_attention_check", False):
            raise error from None
    except Exception:  # the call's own failure: the caller reports it
        pass
    finally:
        for handle in handles:
            handle.remove()


def _attention_problem(args: tuple, kwargs: dict, output: Any) -> str | None:
    names = ("query", "keys", "values", "mask")
    given = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
    values = given.get("values")
    if not (isinstance(values, torch.Tensor) and values.dim() == 3):
        return None  # called otherwise than the contract says: nothing to compare with
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        return f"forward must return (context, weights), got {_tuple_shape(output)}"
    batch, length, width = values.shape
    context, weights = output
    return (_tensor_problem("context", context, (batch, width), values)
            or (None if isinstance(weights, torch.Tensor) and weights.shape == (batch, length)
                else f"weights must be {_dims(batch, length)}, got {_shape(weights)}"))


def _tuple_shape(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(_shape(v) for v in value)})"
    return _shape(value)


# --- scores -----------------------------------------------------------------------------------

def not_finite(model: Any, what: str = "scores") -> str:
    """What to say of scores that are NaN (or infinite where no score can be): one of the network's
    plugins broke its contract, and which one cannot be told, so all of the model's are named."""
    plugins = network_plugins(model)
    return f"the model's {what} are not finite{' (' + ', '.join(plugins) + ')' if plugins else ''}"


def check_validation_loss(task: Any, loss: float) -> float:
    """``loss``, a validation batch's summed loss, unless it is NaN or infinite: then training stops as
    when the training loss diverges (:class:`~nmt.errors.TrainingDiverged`). Training's loss was finite,
    so it is what the model does in eval mode (a plugin's ``phase``), which would otherwise finish the
    run with a best score of 0 and ``nan`` in its metrics."""
    if math.isfinite(loss):
        return loss
    raise TrainingDiverged(f"validation diverged: loss is {loss} at step {task.global_step} (epoch "
                           f"{task.current_epoch}): {not_finite(task)}")


def refuse_scores(model: Any, what: str = "scores") -> None:
    """Raise the PluginError of :func:`not_finite`."""
    raise PluginError(None, not_finite(model, what))


def refuse_attention_values(model: Any) -> None:
    """Raise the PluginError for attention weights that are NaN or infinite."""
    plugins = network_plugins(model, ["attention"]) or ["attention"]
    decoders = network_plugins(model, ["decoder"])
    raise PluginError(", ".join(plugins), "weights are not finite (NaN or infinite)"
                                          f"{', as reported by ' + ', '.join(decoders) if decoders else ''}")


# --- tokenizers -------------------------------------------------------------------------------

def _has_text(line: str) -> bool:
    """Whether ``line`` holds a letter or digit: what no tokenizer may encode as nothing (a line of
    only spaces, controls or zero-width characters may be normalised away)."""
    return any(c.isalnum() for c in line)


def check_ids(tokenizer: Any, ids: Any, text: str, where: str, vocab: int) -> Any:
    """``ids``, what ``tokenizer.encode(text)`` returned for the line at ``where``, once it is a
    sequence of ints in 0..vocab-1, not empty for a line with text; else a PluginError."""
    problem = _ids_problem(ids, text, vocab)
    if problem:
        raise PluginError(plugin_label("tokenizer", tokenizer), f"{where}: {problem}")
    return ids


def encode_all(tokenizer: Any, texts: Sequence[str], wheres: Sequence[str]) -> list:
    """``tokenizer.encode`` of each text, checked (:func:`check_ids`) at its entry of ``wheres``."""
    vocab = len(tokenizer)
    return [check_ids(tokenizer, tokenizer.encode(text), text, where, vocab) for text, where in zip(texts, wheres)]


def _ids_problem(ids: Any, text: str, vocab: int) -> str | None:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            return f"encode must return a list of int, got an array [{', '.join(map(str, ids.shape))}] of {ids.dtype}"
    elif not isinstance(ids, (list, tuple)):
        return f"encode must return a list of int, got {type(ids).__name__}"
    elif not all(type(i) is int for i in ids):
        bad = next((i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_))), None)
        if bad is not None:
            return f"encode must return a list of int, got a list holding {type(bad).__name__} {shorten(repr(bad), 20)}"
    if len(ids) == 0:
        return "encode returned no ids for a non-empty line" if _has_text(text) else None
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab:
        return f"encode returned id {int(low if low < 0 else high)}; ids must be in 0..{vocab - 1} (len(tokenizer) is {vocab})"
    return None


def check_flat_ids(tokenizer: Any, tokens: Any, lengths: Any, lines: list[str], name: str, first_line: int) -> None:
    """What ``tokenizer.encode_flat(lines)`` returned (lines ``first_line``.. of file ``name``, 0-based),
    checked as :func:`check_ids` checks one line, with numpy over the whole chunk (min, max)."""
    label = lambda: plugin_label("tokenizer", tokenizer)  # noqa: E731 - built only for a message
    if not (isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype.kind in "iu"
            and isinstance(lengths, np.ndarray) and lengths.shape == (len(lines),) and lengths.dtype.kind in "iu"
            and int(lengths.sum()) == len(tokens)):
        raise PluginError(label(), f"{name}:{first_line + 1}: encode_flat must return (ids int array, one count "
                                   f"per line), got ({_array(tokens)}, {_array(lengths)}) for {len(lines)} lines")
    vocab = len(tokenizer)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab):
        bad = int(np.flatnonzero((tokens < 0) | (tokens >= vocab))[0])
        line = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
        raise PluginError(label(), f"{name}:{first_line + line + 1}: encode returned id {int(tokens[bad])}; "
                                   f"ids must be in 0..{vocab - 1} (len(tokenizer) is {vocab})")
    for line in np.flatnonzero(lengths == 0).tolist():
        if _has_text(lines[line]):
            raise PluginError(label(), f"{name}:{first_line + line + 1}: encode returned no ids for a non-empty line")


def _array(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array [{', '.join(map(str, value.shape))}] of {value.dtype}"
    return type(value).__name__


def check_text(tokenizer: Any, text: Any, where: str, one_line: bool = True) -> str:
    """``text``, what ``tokenizer.decode`` returned for the output at ``where``, once it is a str and,
    with ``one_line``, holds no line break (an output file answers input line i with line i)."""
    if not isinstance(text, str):
        raise PluginError(plugin_label("tokenizer", tokenizer), f"{where}: decode must return str, got {type(text).__name__}")
    if one_line and ("\n" in text or "\r" in text):
        found = "\\n" if "\n" in text else "\\r"
        raise PluginError(plugin_label("tokenizer", tokenizer),
                          f"{where}: decode returned a line break ('{found}'); the output must answer each "
                          "input line with one line")
    return text
