"""Weights that every position of a recurrence uses, their gradients computed once for all positions.

Autograd differentiates a product ``x_t W^T`` at each position t that uses W: one product of the
position's input and output gradient, whose inner dimension is only the batch's B rows, then an
addition into W's gradient so far, which reads and writes all of W (and for the bias a sum and an
addition). Over T positions that is 2T operations and T passes over W, the most of the small,
memory-bound work in a recurrent decoder's backward pass, and on a GPU 2T kernel launches.

:class:`SharedLinear` gives a loop such a product whose backward keeps the position's input and
output gradient instead. Once the backward pass has gone through every position (autograd runs the
node that handed out the weight after all its uses), W's gradient is one product over all positions
(inner dimension T·B) and the bias's one sum: the same gradient, up to the order of additions, in two
operations instead of 2T. Under autocast the weight is cast once for the loop, not at each position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SharedLinear:
    """``F.linear(x, weight, bias)`` for every position of one forward pass, with the weight's and the
    bias's gradients computed once, after the backward pass has reached every position."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        device = weight.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        self.tape = _Tape()
        self.weight, self.bias = _HandOut.apply(weight, bias, self.tape, dtype)  # [out, in], [out] or None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, in] -> [B, out], in the weight's precision (autocast's, where it is on)."""
        return _Product.apply(x, self.weight, self.bias, self.tape)


class _Tape:
    """What the positions' backward passes leave for the weight's: kept apart from :class:`SharedLinear`,
    which holds the weight (and so the autograd nodes that hold this), so that no cycle runs through them."""

    __slots__ = ("inputs", "grads")

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []  # each position's input [B, in], as the backward pass reaches it
        self.grads: list[torch.Tensor] = []  # and its output's gradient [B, out]


class _HandOut(torch.autograd.Function):
    """The weight and bias, cast once, to every position's :class:`_Product`; its backward gathers them."""

    @staticmethod
    def forward(ctx, weight, bias, tape: _Tape, dtype: torch.dtype):
        ctx.tape = tape
        ctx.set_materialize_grads(False)  # the products hand back no gradient here: none to allocate
        return weight.to(dtype) if weight.dtype != dtype else weight.view_as(weight), (
            None if bias is None else bias.to(dtype) if bias.dtype != dtype else bias.view_as(bias))

    @staticmethod
    def backward(ctx, _weight_grad, _bias_grad):
        tape = ctx.tape
        weight, bias = ctx.needs_input_grad[:2]
        if not tape.grads:
            return None, None, None, None
        inputs, grads = torch.cat(tape.inputs), torch.cat(tape.grads)  # [T*B, in], [T*B, out]
        tape.inputs.clear()
        tape.grads.clear()
        return (grads.t() @ inputs if weight else None,  # [out, in]: autograd casts it to the weight's dtype
                grads.sum(0, dtype=torch.float32) if bias else None, None, None)


class _Product(torch.autograd.Function):
    """One position's ``x W^T + b``; its backward gives x's gradient and keeps (x, the output's gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias, tape: _Tape):
        ctx.tape, ctx.x_dtype = tape, x.dtype
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        with torch.autocast(x.device.type, enabled=False):  # cast already, once, by _HandOut
            return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.tape.inputs.append(x)
        ctx.tape.grads.append(grad)
        return (grad @ weight).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None, None, None, None
