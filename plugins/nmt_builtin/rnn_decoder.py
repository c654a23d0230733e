"""Attentional recurrent decoder (Bahdanau et al., 2015; Luong et al., 2015 input feeding).

One step: [embedded previous token ; previous attentional output] -> RNN -> query (top hidden)
-> attention over the encoder states -> attentional output o = tanh(W [query ; context]).
The decoder state is a tuple ``(hidden, prev_output)``: ``hidden`` is [L, B, H] (GRU) or a tuple
(h, c) of such (LSTM), ``prev_output`` is [B, H]. The memory is ``(prepared_keys, values, mask)``.
Both are passed in and returned; nothing per batch is kept on the module. It meets
:class:`nmt.contracts.Decoder`: it starts from the encoder's recurrent state when the encoder has
one (its top layer), else from the encoder's pooled summary, so any encoder can feed it.

Under autocast (bf16) ``nn.GRU`` runs the cell and its state in bf16 (cuDNN on CUDA, recasting its
weights at every position). ``AUTOCAST_CELL`` chooses per device how the cell runs instead: on CUDA
the module in float32 with autocast off; or written out from the module's weights, its two products
in autocast's precision and its gates and state in float32. :meth:`compile_step` (``model.compile``)
runs the step, or the teacher-forced loop in chunks of a few positions, through ``torch.compile``
with the written-out cell (the module's RNN kernels are opaque to the compiler). ``TEACHER_FORCING``
chooses per device whether teacher forcing steps through :meth:`step` or runs the written cell with
the first layer's input products of every position computed up front (:meth:`_hoisted_forward`), and
then whether the gradients of the weights every position uses are computed once for all positions
(:class:`~nmt_builtin.shared_weights.SharedLinear`).
"""
from __future__ import annotations

import functools
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nmt.contracts import AttentionFactory, EncoderOutput, top_layer
from nmt.registry import register

from .shared_weights import SharedLinear

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
State = tuple[Hidden, torch.Tensor]
Memory = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@register("decoder", "rnn")
class RNNDecoder(nn.Module):
    """Conditional GRU/LSTM decoder with attention, optional input feeding and an encoder bridge."""

    output_size: int  # H, the hidden size
    # How the recurrent cell runs under autocast, per device type (others: "autocast"): "autocast" (the
    # module under autocast: cell and state in bf16; on CUDA the cuDNN cell, recasting its weights at
    # every position), "float32" (the module with autocast off, on float32 inputs and state) or
    # "written" (the cell written out from the module's weights: products in autocast's precision,
    # gates and state in float32). On the CPU autocast's module is the fastest of the three (nmt bench
    # train-speed: bf16 against bf16-f32cell and bf16-writtencell; README, Training speed). CUDA runs
    # the float32 module until benchmarks/gpu_check.sh has measured the three there.
    AUTOCAST_CELL: dict[str, Literal["autocast", "float32", "written"]] = {"cpu": "autocast", "cuda": "float32"}
    # How teacher forcing (training, validation, scoring) runs, per device type (others: "stepwise"):
    # "stepwise" calls step() at every position (its cell as above), "hoisted" runs the written cell
    # with the first layer's input product of the embeddings computed for all positions at once (one
    # large product, not T small ones; under autocast its products bf16, gates and state float32);
    # "shared" is hoisted with the gradients of the other weights the positions use (the fed-back
    # columns, the recurrent weights, the output layer; the attention's weights, keys and values where
    # it offers shared()) computed once for all positions, not at each.
    # On the CPU shared gives x1.04 in float32 and 1.05 to 1.07 of bf16 (nmt bench train-speed, one and
    # two threads), and a 10-minute bf16 training side by side with stepwise made 9% more steps (README,
    # Training speed), so the CPU trains shared. CUDA stays stepwise (its cuDNN cell) until gpu_check.sh
    # has measured the rows there, where shared's fewer operations (54 a position against 80) are what
    # a launch-bound step pays for.
    TEACHER_FORCING: dict[str, Literal["stepwise", "hoisted", "shared"]] = {"cpu": "shared", "cuda": "stepwise"}

    class Config(BaseModel):
        """Recipe options of the recurrent decoder (``model.decoder``)."""

        model_config = ConfigDict(extra="forbid")
        cell: Literal["gru", "lstm"] = "gru"
        # Bounded so a typo (1e9) is a recipe error naming the key, not an allocation failure.
        hidden_size: int = Field(512, gt=0, le=65536)
        num_layers: int = Field(1, gt=0, le=64)
        dropout: float = Field(0.0, ge=0, lt=1)  # on the input embeddings and between layers
        hidden_dropout: float = Field(0.0, ge=0, lt=1)  # on the attentional output
        input_feeding: bool = True  # feed the previous attentional output back as input
        bridge: bool = True  # initial hidden = tanh(W encoder summary); False: zeros
        # How teacher forcing runs (TEACHER_FORCING's ways); null: the device's default there. The same
        # function either way: a speed setting (README, Training speed), e.g. shared on a GPU where
        # benchmarks/gpu_check.sh shows it pays.
        teacher_forcing: Optional[Literal["stepwise", "hoisted", "shared"]] = None

    def __init__(
        self,
        config: Config,
        input_size: int,
        encoder_output_size: int,
        attention_factory: AttentionFactory,
    ) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = self.output_size = config.hidden_size
        self._compiled: Literal["step", "static", "loop"] | None = None  # compile_step's mode; None: eager
        self.num_layers = config.num_layers
        rnn_input_size = input_size + (config.hidden_size if config.input_feeding else 0)
        rnn_class = nn.GRU if config.cell == "gru" else nn.LSTM
        self.rnn = rnn_class(
            rnn_input_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.attention = attention_factory(config.hidden_size, encoder_output_size)
        self.bridge = nn.Linear(encoder_output_size, config.hidden_size) if config.bridge else None
        self.output_layer = nn.Linear(config.hidden_size + encoder_output_size, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def init_state(self, encoded: EncoderOutput) -> State:
        """The state before the first step: the bridge over the encoder's recurrent state (its top layer)
        when it has one, else over its pooled summary (the same vector for the RNN encoders); or zeros."""
        if self.bridge is not None:
            summary = encoded.pooled if encoded.recurrent is None else top_layer(encoded.recurrent)  # [B, D]
            h0 = torch.tanh(self.bridge(summary))  # [B, D] -> [B, H]
        else:
            h0 = self.output_layer.weight.new_zeros(encoded.states.size(0), self.hidden_size)  # [B, H]
        prev_output = torch.zeros_like(h0)  # [B, H]
        hidden = h0.unsqueeze(0).repeat(self.num_layers, 1, 1)  # [L, B, H]
        if self.config.cell == "lstm":
            hidden = (hidden, hidden.clone())  # the cell state starts like the hidden state (as Joey NMT)
        return hidden, prev_output

    def prepare_memory(self, encoded: EncoderOutput) -> Memory:
        """Project the attention keys once per batch: returns (prepared_keys, values, mask)."""
        states = encoded.states  # [B, S, V]
        return self.attention.prepare(states), states, encoded.mask  # [B, S, A], [B, S, V], [B, S]

    def step(self, input_emb: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One decoding step for ``input_emb`` [B, E]; returns (output [B, H], new state, weights [B, S])."""
        if self._compiled in ("step", "static"):
            return _compiled_step(self._compiled == "static", input_emb.is_cuda)(self, input_emb, state, memory)
        return self._step(input_emb, state, memory, self._cell)

    def compile_step(self, enabled: bool = True, static: bool = False, loop: bool = False) -> None:
        """Run :meth:`step` through ``torch.compile`` (dynamic shapes: one graph for every batch and
        source length), or eagerly again. ``static``: one graph per shape of the step (rows, source
        length), replayed as CUDA graphs on CUDA (mode ``reduce-overhead``); for batches padded to a
        few shapes (``data.pad_lengths``). ``loop``: instead of the step, teacher forcing in training
        (:meth:`forward` while ``self.training``) runs through ``torch.compile`` a few positions at a time
        (``LOOP_CHUNKS``: one graph per chunk length, dynamic in rows and source length), so the
        compiler fuses across positions and their backward; search and evaluation stay eager. The mode
        is a plain attribute, so copies of the module (weight averaging) compile too."""
        self._compiled = ("loop" if loop else "static" if static else "step") if enabled else None

    def _step(self, input_emb: torch.Tensor, state: State, memory: Memory, cell) -> tuple[torch.Tensor, State, torch.Tensor]:
        hidden, prev_output = state
        x = self.emb_dropout(input_emb)  # [B, E]
        if self.config.input_feeding:
            x = torch.cat([x, prev_output], dim=-1)  # [B, E + H]
        query, hidden = cell(x, hidden)  # [B, H] the top layer's new hidden state, [L, B, H] (or (h, c))
        output, weights = self._attend(query, memory)  # [B, H], [B, S]
        return output, (hidden, output), weights

    def _attend(self, query: torch.Tensor, memory: Memory, output_layer=None, attend=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The attentional output [B, H] for the top layer's new hidden state ``query`` [B, H], and the
        weights [B, S]; ``output_layer`` in place of the module's (a :class:`SharedLinear` of its weights),
        ``attend`` (a function of the query) in place of the attention over ``memory``."""
        context, weights = attend(query) if attend else self.attention(query, *memory)  # [B, V], [B, S]
        output = torch.tanh((output_layer or self.output_layer)(torch.cat([query, context], dim=-1)))  # [B, H + V] -> [B, H]
        return self.hidden_dropout(output), weights  # [B, H], [B, S]

    def _cell(self, x: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """The recurrent cell for one position: the module, or under autocast as ``AUTOCAST_CELL`` says."""
        device = x.device.type
        mode = self.AUTOCAST_CELL.get(device, "autocast") if torch.is_autocast_enabled(device) else None
        if mode == "written":
            return self._written_cell(x, hidden)
        if mode == "float32":
            with torch.autocast(device, enabled=False):
                hidden = tuple(h.float() for h in hidden) if isinstance(hidden, tuple) else hidden.float()
                return self._module_cell(x.float(), hidden)
        return self._module_cell(x, hidden)

    def _module_cell(self, x: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """The ``nn.GRU``/``nn.LSTM`` module for one position."""
        rnn_output, hidden = self.rnn(x.unsqueeze(1), hidden)  # [B, 1, H], [L, B, H] (or (h, c))
        return rnn_output.squeeze(1), hidden

    def _written_cell(self, x: torch.Tensor | None, hidden: Hidden, first_gates: torch.Tensor | None = None,
                      products: dict | None = None) -> tuple[torch.Tensor, Hidden]:
        """What :meth:`_module_cell` computes, written out from its weights: products in autocast's
        precision, gates and state in float32. ``first_gates``: the first layer's input product
        [B, G*H] with its bias, computed already (then ``x`` is not read). ``products``: layer ->
        (input product, recurrent product) in place of ``F.linear`` with the module's weights. ``hidden``'s
        layers as a list (of [B, H]; or two, LSTM) give the new state so too, not stacked."""
        lstm = self.config.cell == "lstm"
        h_layers, c_layers = hidden if lstm else (hidden, None)  # [L, B, H] each
        new_h, new_c = [], []
        for layer in range(self.num_layers):
            if layer > 0:  # nn.GRU/nn.LSTM's dropout between layers
                x = F.dropout(x, self.rnn.dropout, self.training)
            input_product, recurrent_product = (products or {}).get(layer) or self._layer_products(layer)
            gates = first_gates if layer == 0 and first_gates is not None else input_product(x)
            recurrent = recurrent_product(h_layers[layer])
            if lstm:
                x, c = _lstm_cell(gates, recurrent, c_layers[layer])
                new_c.append(c)
            else:
                x = _gru_cell(gates, recurrent, h_layers[layer])
            new_h.append(x)
        if isinstance(h_layers, list):  # the layers as a list: kept so (see _hoisted_forward)
            return x, ((new_h, new_c) if lstm else new_h)
        return x, ((torch.stack(new_h), torch.stack(new_c)) if lstm else torch.stack(new_h))

    def _layer_products(self, layer: int, shared: bool = False):
        """(input product, recurrent product) of one layer with the module's weights: ``F.linear``, or
        ``shared``: :class:`SharedLinear` (their gradients once for all positions)."""
        weight_ih, weight_hh, bias_ih, bias_hh = (getattr(self.rnn, f"{kind}_l{layer}")
                                                  for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        if shared:
            return SharedLinear(weight_ih, bias_ih), SharedLinear(weight_hh, bias_hh)
        return functools.partial(F.linear, weight=weight_ih, bias=bias_ih), functools.partial(F.linear, weight=weight_hh, bias=bias_hh)

    def forward(self, inputs: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Teacher forcing over ``inputs`` [B, T, E]; returns (outputs [B, T, H], final state, attention [B, T, S])."""
        if self._compiled == "loop" and self.training:
            return self._chunked_forward(inputs, state, memory)
        mode = "stepwise" if self._compiled else (self.config.teacher_forcing
                                                  or self.TEACHER_FORCING.get(inputs.device.type, "stepwise"))
        if mode != "stepwise":
            return self._hoisted_forward(inputs, state, memory, shared=mode == "shared" and torch.is_grad_enabled())
        return _stepwise(self.step, inputs, state, memory)

    # The chunk lengths of the compiled loop, longest first: a target of T positions runs as chunks of
    # these lengths (T = 8a + 4b + 2c + d), one compiled graph each. Longer chunks compile longer and
    # gave no more here (the en-de model on the 2-core CPU, one-off runs of nmt bench train-speed
    # --compile with LOOP_CHUNKS set: (16, 8, 4, 2, 1) x1.07 and 1.10 of bf16 after 141 to 250 s of
    # compilation a precision; (8, 4, 2, 1) x1.07 and 1.09 after about 60 s; (8, 1) x1.08 and 1.04).
    LOOP_CHUNKS = (8, 4, 2, 1)

    def _chunked_forward(self, inputs: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """:meth:`forward` through the compiled loop of :func:`_written_loop`, ``LOOP_CHUNKS`` positions at a time."""
        loop = _compiled_loop()
        state = _like_later_states(state)  # the first chunk meets the graph of the chunks after it
        outputs, attention, start = [], [], 0
        for length in self.LOOP_CHUNKS:
            while inputs.size(1) - start >= length:
                chunk = inputs[:, start:start + length].clone()  # not a view: the same graph wherever it starts
                chunk_outputs, state, chunk_attention = loop(self, chunk, state, memory)
                outputs.append(chunk_outputs)
                attention.append(chunk_attention)
                start += length
        return torch.cat(outputs, dim=1), state, torch.cat(attention, dim=1)  # [B, T, H], state, [B, T, S]

    def _hoisted_forward(self, inputs: torch.Tensor, state: State, memory: Memory,
                         shared: bool = False) -> tuple[torch.Tensor, State, torch.Tensor]:
        """:meth:`forward` through the written cell, the first layer's input product of the embeddings
        of all T positions computed at once (one [B*T, E] x [E, G*H] product, not T small ones); each
        position adds only the fed-back output's share. ``shared``: every other weight the positions
        use (the fed-back columns, the recurrent and deeper layers' weights, the output layer) through
        :class:`SharedLinear`, their gradients once for all positions, and the attention through its
        ``shared`` where it has one (its weights', the keys' and the values' gradients so too)."""
        hidden, prev_output = state
        # The state's layers as a list through the loop, stacked once at the end: stacking them at each
        # position and taking a layer from the stack costs three operations a position, forward and backward.
        hidden = tuple(list(h.unbind(0)) for h in hidden) if isinstance(hidden, tuple) else list(hidden.unbind(0))
        emb_size = inputs.size(-1)
        w_ih = self.rnn.weight_ih_l0  # [G*H, E (+ H)]
        ahead = F.linear(self.emb_dropout(inputs), w_ih[:, :emb_size], self.rnn.bias_ih_l0)  # [B, T, G*H]
        w_feed = w_ih[:, emb_size:] if self.config.input_feeding else None  # [G*H, H]
        device = inputs.device.type
        if w_feed is not None and shared:
            feed = SharedLinear(w_feed)
        elif w_feed is not None:
            if torch.is_autocast_enabled(device):  # cast once, not at every position
                w_feed = w_feed.to(torch.get_autocast_dtype(device))
            feed = functools.partial(F.linear, weight=w_feed)
        products = {layer: self._layer_products(layer, shared) for layer in range(self.num_layers)}  # once, not at each position
        output_layer = SharedLinear(self.output_layer.weight, self.output_layer.bias) if shared else None
        # an attention that offers it (nmt.contracts.SharedAttention) shares its own weights' gradients too
        attend = self.attention.shared(*memory) if shared and callable(getattr(self.attention, "shared", None)) else None
        # The attention's products and the output layer cast the float32 state to autocast's precision
        # anyway: cast it once for both (the state's concatenation with the context then stays in it).
        # The same forward pass in 4 operations a position less; the state's gradients from the two add
        # in bf16 before the cast back (as in autocast's module cell), not in float32: apart by bf16's rounding.
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        outputs, attention = [], []
        for first in ahead.unbind(1):  # [B, G*H]
            gates = first if w_feed is None else first + feed(prev_output)
            query, hidden = self._written_cell(None, hidden, first_gates=gates, products=products)
            prev_output, weights = self._attend(query if low is None else query.to(low), memory, output_layer, attend)
            outputs.append(prev_output)
            attention.append(weights)
        hidden = tuple(torch.stack(h) for h in hidden) if isinstance(hidden, tuple) else torch.stack(hidden)  # [L, B, H]
        return torch.stack(outputs, dim=1), (hidden, prev_output), torch.stack(attention, dim=1)

    @staticmethod
    def select_state(state: State, index: torch.Tensor) -> State:
        """Reorder or repeat the batch entries of ``state`` (beam search): entry i becomes old ``index[i]``."""
        hidden, prev_output = state
        if isinstance(hidden, tuple):
            hidden = tuple(h.index_select(1, index) for h in hidden)  # each [L, B', H]
        else:
            hidden = hidden.index_select(1, index)  # [L, B', H]
        return hidden, prev_output.index_select(0, index)  # prev_output [B', H]

    @staticmethod
    def select_memory(memory: Memory, index: torch.Tensor) -> Memory:
        """Reorder or repeat the batch entries of ``memory`` (batch is dimension 0 of each tensor)."""
        return tuple(m.index_select(0, index) for m in memory)


def _gru_cell(gates: torch.Tensor, recurrent: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """nn.GRU's cell from the input and recurrent products [B, 3H] (order r, z, n), in float32."""
    i_r, i_z, i_n = gates.float().chunk(3, dim=-1)
    h_r, h_z, h_n = recurrent.float().chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h.float() - n)  # (1 - z) * n + z * h


def _lstm_cell(gates: torch.Tensor, recurrent: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.LSTM's cell from the input and recurrent products [B, 4H] (order i, f, g, o), in float32."""
    i, f, g, o = (gates.float() + recurrent.float()).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _like_later_states(state: State) -> State:
    """A start state as the written cell's later states are, so that the compiled loop's first chunk meets
    the graph of the chunks after it (Dynamo compiles anew for another dtype or requires_grad): the
    recurrent state in float32 (the cell keeps it so; under autocast the bridge gives bf16, which the
    cell's products cast back to exactly), and in training each tensor without a gradient (the zeros
    of the first previous output) a leaf that asks for one."""
    def like_later(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = t if dtype is None else t.to(dtype)
        return t.detach().requires_grad_() if torch.is_grad_enabled() and not t.requires_grad else t
    hidden, prev_output = state
    hidden = tuple(like_later(h, torch.float32) for h in hidden) if isinstance(hidden, tuple) else like_later(hidden, torch.float32)
    return hidden, like_later(prev_output)


def _stepwise(step, inputs: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
    """Teacher forcing over ``inputs`` [B, T, E], ``step(input [B, E], state, memory)`` at each position;
    returns (outputs [B, T, H], final state, attention [B, T, S])."""
    outputs, attention = [], []
    for step_input in inputs.unbind(1):  # unbind, not inputs[:, t]: its backward is one stack, not T copies
        output, state, weights = step(step_input, state, memory)  # [B, H], state, [B, S]
        outputs.append(output)
        attention.append(weights)
    return torch.stack(outputs, dim=1), state, torch.stack(attention, dim=1)


def _written_step(decoder: RNNDecoder, input_emb: torch.Tensor, state: State, memory: Memory):
    return decoder._step(input_emb, state, memory, decoder._written_cell)


def _written_loop(decoder: RNNDecoder, inputs: torch.Tensor, state: State, memory: Memory):
    """Teacher forcing over the few positions of ``inputs`` [B, t, E] with the written-out cell."""
    return _stepwise(functools.partial(_written_step, decoder), inputs, state, memory)


STATIC_GRAPHS = 256  # the most shapes a static compiled step specialises to before it runs eagerly


def _allow_graphs(graphs: int = 0):
    """Let Dynamo look into the ``nn.GRU``/``nn.LSTM`` module and compile ``graphs`` graphs of one function.

    The written cell reads its weights from the module without calling it; Dynamo refuses to look into
    such a module at all unless ``allow_rnn`` is set, and without it the whole cell falls back to eager
    (a graph break at every step). It is set for the process: setting it around each call
    (``config.patch``) costs about 20 us a call, at every position of the step that compiling is there
    to make cheap."""
    config = torch._dynamo.config
    config.allow_rnn = True
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), graphs))


@functools.cache
def _compiled_step(static: bool = False, cuda: bool = False):
    """The decoder step with the written-out cell through torch.compile, built once per process on first use."""
    if not static:
        _allow_graphs()
        return torch.compile(_written_step, dynamic=True)
    _allow_graphs(STATIC_GRAPHS)  # each shape is one more compilation: let a padded run's few shapes all compile
    return torch.compile(_written_step, dynamic=False, mode="reduce-overhead" if cuda else None)


@functools.cache
def _compiled_loop():
    """:func:`_written_loop` through torch.compile, built once per process on first use: dynamic in rows and
    source length, one graph per chunk length (the loop is unrolled) and precision (float32, bf16); the
    recompile limit leaves room for twice that (a second device)."""
    _allow_graphs(2 * 2 * len(RNNDecoder.LOOP_CHUNKS))
    return torch.compile(_written_loop, dynamic=True)
