"""The contracts every encoder, decoder and attention plugin meets, declared once, and their one builder.

An encoder reads embedded inputs and returns an :class:`EncoderOutput`: one state per position, the
mask of real positions, a pooled summary of the whole sequence and, for recurrent encoders only, the
recurrent state a decoder may start from. Consumers (classifiers, taggers, regressors, decoders)
read these fields by name, so a Transformer or convolutional encoder needs no fake RNN state.

Attention takes (query, keys, values, mask) and returns (context, weights); keys are projected once
per batch by ``prepare``. Decoders and attention pass their per-batch state and memory in and out:
nothing per batch is kept in a module attribute.

``nmt.register`` checks a plugin class against its contract when it registers (:func:`check_plugin`),
so a malformed plugin fails at import with a message naming what is missing, not at the first batch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from nmt.recipe import Component, Recipe

# A recurrent state, layer by layer: a tensor [L, B, D], or an LSTM's tuple (h, c) of two such tensors.
RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class EncoderOutput:
    """What every encoder returns; ``D`` is the encoder's ``output_size``.

    ``states``  [B, S, D] one state per input position (padded positions are masked, not read).
    ``mask``    [B, S] bool, True at real positions.
    ``pooled``  [B, D] one summary per sequence: an RNN's top-layer final state (forward end and
                backward start), a Transformer's masked mean; what a classifier's ``final`` pooling
                and a regressor's ``last`` output read.
    ``recurrent`` the final recurrent state [L, B, D] (or (h, c)) of an RNN encoder, else None; a
                decoder may start from it, and truncated BPTT carries it to the next piece.
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    recurrent: RecurrentState | None = None


def top_layer(state: RecurrentState) -> torch.Tensor:
    """The top layer [B, D] of a recurrent state [L, B, D] (the hidden part h of an LSTM's (h, c))."""
    hidden = state[0] if isinstance(state, tuple) else state
    return hidden[-1]


@runtime_checkable
class Encoder(Protocol):
    """``model.encoder``: embedded inputs [B, S, input_size] and their lengths [B] to an :class:`EncoderOutput`."""

    Config: type[BaseModel]  # the recipe options of the section
    output_size: int  # D of states and pooled

    def __init__(self, config: BaseModel, input_size: int) -> None: ...

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput: ...


class RecurrentEncoder(Encoder, Protocol):
    """An encoder that can continue from a recurrent state (what ``regress``'s ``model.tbptt_steps`` needs)."""

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                initial_state: RecurrentState | None = None) -> EncoderOutput: ...


@runtime_checkable
class Attention(Protocol):
    """``model.attention``: scores the keys of each position with a query; built by the decoder."""

    Config: type[BaseModel]

    def __init__(self, config: BaseModel, query_size: int, key_size: int) -> None: ...

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """Keys [B, S, K] to the keys ``forward`` takes [B, S, A]; once per batch, never per step."""

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query [B, Q], prepared keys [B, S, A], values [B, S, V], mask [B, S] to (context [B, V], weights [B, S])."""


@runtime_checkable
class SharedAttention(Attention, Protocol):
    """An attention that also offers ``shared``, which the RNN decoder's teacher forcing ``shared`` uses
    where a plugin has it (optional: without it the decoder calls ``forward`` at each position)."""

    def shared(self, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """For the positions of one teacher-forced pass over this memory: a function of the query [B, Q]
        that returns what ``forward`` does, and may compute the gradients of what every position uses
        (its weights, the keys, the values) once for all positions (``nmt_builtin.shared_weights``)."""


AttentionFactory = Callable[[int, int], Attention]  # (query_size, key_size) -> attention


@runtime_checkable
class Decoder(Protocol):
    """``model.decoder``: one output per step, attending over the encoder states.

    Its state and memory are opaque to the task; the task only passes them back, and beam search
    reorders them with ``select_state`` and ``select_memory``.
    """

    Config: type[BaseModel]
    output_size: int  # H of each step's output

    def __init__(self, config: BaseModel, input_size: int, encoder_output_size: int,
                 attention_factory: AttentionFactory) -> None: ...

    def init_state(self, encoded: EncoderOutput) -> Any:
        """The state before the first step (from ``encoded.recurrent`` when given, else ``encoded.pooled``)."""

    def prepare_memory(self, encoded: EncoderOutput) -> Any:
        """What every step attends over, prepared once per batch."""

    def step(self, input_emb: torch.Tensor, state: Any, memory: Any) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Input [B, E] to (output [B, H], new state, attention weights [B, S])."""

    def forward(self, inputs: torch.Tensor, state: Any, memory: Any) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Teacher forcing over inputs [B, T, E]: (outputs [B, T, H], final state, attention [B, T, S])."""

    def select_state(self, state: Any, index: torch.Tensor) -> Any: ...

    def select_memory(self, memory: Any, index: torch.Tensor) -> Any: ...


# --- the one builder of encoder, attention and decoder --------------------------------------

@dataclass(frozen=True)
class EncoderDecoderBuilder:
    """Builds an encoder and an attentional decoder from resolved recipe sections, wired the same way
    by every task that has them (the decoder's attention sees the encoder's ``output_size`` as key size).

    Two calls, not one, so a task may create other modules in between and keep its parameter
    initialisation order (and with it the numbers a seed gives).
    """

    encoder: Component
    attention: Component
    decoder: Component

    @classmethod
    def from_recipe(cls, recipe: Recipe, prefix: str = "model") -> EncoderDecoderBuilder:
        """The ``encoder``, ``attention`` and ``decoder`` sections under ``prefix``, resolved at validation."""
        found = recipe.components
        return cls(found[f"{prefix}.encoder"], found[f"{prefix}.attention"], found[f"{prefix}.decoder"])

    def build_encoder(self, input_size: int) -> Encoder:
        return build_encoder(self.encoder, input_size)

    def build_decoder(self, input_size: int, encoder: Encoder) -> Decoder:
        attention_cls, attention_config = self.attention.cls, self.attention.config
        decoder_cls, decoder_config = self.decoder.cls, self.decoder.config
        decoder = decoder_cls(decoder_config, input_size=input_size, encoder_output_size=encoder.output_size,
                              attention_factory=lambda query_size, key_size: attention_cls(attention_config,
                                                                                           query_size, key_size))
        return check_output_size(decoder, "decoder", "the size H of each step's output")


def build_encoder(component: Component, input_size: int) -> Encoder:
    """An encoder from its resolved section, reading inputs of ``input_size`` features."""
    encoder = component.cls(component.config, input_size=input_size)
    return check_output_size(encoder, "encoder", "the size D of its states")


# The largest output_size a plugin may report: twice the largest hidden_size a built-in allows (a
# bidirectional RNN's). Past it the size is a bug in the plugin, not a model, and the parameter count
# would blame the recipe's sizes for it.
MAX_OUTPUT_SIZE = 2**20


def check_output_size(module: Any, kind: str, meaning: str) -> Any:
    """``module``, once its ``output_size`` is known to be a positive int: the builders size the next
    layers from it, and a wrong one would fail there with a torch error that names no plugin."""
    from nmt.errors import PluginError, quote
    from nmt.registry import describe

    size = getattr(module, "output_size", None)
    if not hasattr(module, "output_size"):
        problem = f"output_size was not set in __init__ ({meaning})"
    elif isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_OUTPUT_SIZE:
        problem = f"output_size ({meaning}) must be a positive integer up to {MAX_OUTPUT_SIZE:,}, got {quote(size)}"
    else:
        return module
    raise PluginError(describe(kind, type(module)), problem)


# --- registration checks --------------------------------------------------------------------

def check_plugin(kind: str, cls: Any) -> str | None:
    """What keeps ``cls`` from meeting the contract of ``kind``, or None when it meets it."""
    if not isinstance(cls, type):
        return f"expected a class, got {type(cls).__name__}"
    checks = {"encoder": _encoder_problem, "decoder": _decoder_problem, "attention": _attention_problem,
              "tokenizer": _tokenizer_problem, "task": _task_problem}
    return checks[kind](cls) if kind in checks else None


def _config_problem(cls: type, attribute: str = "Config") -> str | None:
    config = getattr(cls, attribute, None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return f"no {attribute} class (a pydantic BaseModel of its recipe options)"
    return None


def _module_problem(cls: type, kind: str) -> str | None:
    """The checks shared by the network parts: a torch module with a Config."""
    if not issubclass(cls, nn.Module):
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} must subclass torch.nn.Module"
    return _config_problem(cls)


def _declares(cls: type, attribute: str) -> bool:
    """Whether ``cls`` (or a base) sets ``attribute`` or annotates it (set per instance in ``__init__``)."""
    return any(attribute in vars(base) or attribute in vars(base).get("__annotations__", {})
               for base in cls.__mro__ if base is not object)


def _takes(function: Any, names: tuple[str, ...], keywords: tuple[str, ...] = ()) -> bool:
    """Whether ``function`` (unbound, ``self`` first) can be called with ``names`` positionally and
    ``keywords`` by keyword, as the builders call it."""
    try:
        inspect.signature(function).bind(None, *names, **{k: k for k in keywords})
    except (TypeError, ValueError):
        return False
    return True


def _signature_problem(cls: type, method: str, *names: str, keywords: tuple[str, ...] = ()) -> str | None:
    """What keeps ``cls.method`` from taking ``names`` positionally then ``keywords`` by name."""
    function = getattr(cls, method, None)
    shown = ", ".join(names + keywords)
    if function is None or (method == "forward" and function is nn.Module.forward):
        return f"no {method}({shown}) method"
    if not _takes(function, names, keywords):
        call = ", ".join(list(names) + [f"{k}=..." for k in keywords])
        how = f", called as {cls.__name__}({call});" if keywords else ","
        return f"{method} must take ({shown}){how} got {method}{inspect.signature(function)}"
    return None


def _encoder_problem(cls: type) -> str | None:
    return (_module_problem(cls, "encoder")
            or (None if _declares(cls, "output_size") else
                "no output_size (declare `output_size: int` and set it in __init__: the size D of its states)")
            or _signature_problem(cls, "__init__", "config", keywords=("input_size",))
            or _signature_problem(cls, "forward", "inputs", "lengths"))


def _decoder_problem(cls: type) -> str | None:
    missing = [m for m in ("init_state", "prepare_memory", "step", "select_state", "select_memory")
               if not callable(getattr(cls, m, None))]
    return (_module_problem(cls, "decoder")
            or (None if _declares(cls, "output_size") else "no output_size (the size H of each step's output)")
            or _signature_problem(cls, "__init__", "config",
                                  keywords=("input_size", "encoder_output_size", "attention_factory"))
            or (f"missing methods: {', '.join(missing)}" if missing else None)
            or _signature_problem(cls, "init_state", "encoded")
            or _signature_problem(cls, "prepare_memory", "encoded")
            or _signature_problem(cls, "forward", "inputs", "state", "memory"))


def _attention_problem(cls: type) -> str | None:
    return (_module_problem(cls, "attention")
            or _signature_problem(cls, "__init__", "config", "query_size", "key_size")
            or _signature_problem(cls, "prepare", "keys")
            or _signature_problem(cls, "forward", "query", "keys", "values", "mask"))


def _tokenizer_problem(cls: type) -> str | None:
    from nmt.data.tokenizer import Tokenizer

    if not issubclass(cls, Tokenizer):
        return "a tokenizer must subclass nmt.data.tokenizer.Tokenizer"
    if inspect.isabstract(cls):
        return f"abstract methods left: {', '.join(sorted(cls.__abstractmethods__))}"
    return _config_problem(cls)


def _task_problem(cls: type) -> str | None:
    """A task is a :class:`nmt.tasks.base.Task`: besides its configs, training reads what the base gives
    (``monitor``, ``monitor_mode``, ``prepare_run``, ``from_run``, the optimiser) and what a task adds
    (``make_datamodule``); a class that only looks like one fails at the first of them, naming nothing."""
    from nmt.tasks.base import Task

    if not issubclass(cls, Task):
        return ("a task must subclass nmt.tasks.base.Task (a LightningModule; training reads its monitor, "
                "monitor_mode, prepare_run, from_run and make_datamodule)")
    missing = [m for m in ("check_recipe", "prepare_run", "from_run") if not callable(getattr(cls, m, None))]
    return (_config_problem(cls, "DataConfig") or _config_problem(cls, "ModelConfig")
            or (f"missing methods: {', '.join(missing)}" if missing else None)
            or (None if cls.make_datamodule is not Task.make_datamodule else "no make_datamodule() method")
            or _monitor_problem(cls))


def _monitor_problem(cls: type) -> str | None:
    """``monitor`` and ``monitor_mode`` pick the best checkpoint and stop early (Lightning's callbacks)."""
    if not isinstance(cls.monitor, str) or not cls.monitor:
        return f"monitor must be the name of a logged metric (e.g. 'val/loss'), got {cls.monitor!r:.60}"
    if cls.monitor_mode not in ("min", "max"):
        return f"monitor_mode must be 'min' or 'max', got {cls.monitor_mode!r:.60}"
    return None
