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
:class:`SharedBatchMatrix` does the same for a matrix per batch entry that every position multiplies
(an attention's keys or values): its gradient one batched product over all positions.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The precision the products run in: autocast's where it is on, else the tensor's."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


class SharedLinear:
    """``F.linear(x, weight, bias)`` for every position of one forward pass, with the weight's and the
    bias's gradients computed once, after the backward pass has reached every position."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.tape = _Tape(_linear_gradients)
        self.weight, self.bias = _HandOut.apply(self.tape, _compute_dtype(weight), weight, bias)  # [out, in], [out] or None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., in] -> [..., out], in the weight's precision (autocast's, where it is on)."""
        return _Product.apply(x, self.weight, self.bias, self.tape)


class SharedBatchMatrix:
    """``M_b x_b`` for every position of one forward pass, ``M`` [B, m, n] a matrix per batch entry that
    every position uses (``torch.bmm(M, x.unsqueeze(2))``), with M's gradient computed once: one batched
    product over all positions (inner dimension T) instead of a product and an addition at each."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.tape = _Tape(_batch_matrix_gradients)
        (self.matrix,) = _HandOut.apply(self.tape, _compute_dtype(matrix), matrix)  # [B, m, n]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, n] -> [B, m], in the matrix's precision (autocast's, where it is on)."""
        return _BatchProduct.apply(x, self.matrix, self.tape)


class _Tape:
    """What the positions' backward passes leave for the shared tensors' gradients, and how those come
    of it: kept apart from the objects that hold the handed-out tensors (and so the autograd nodes that
    hold this), so that no cycle runs through them."""

    __slots__ = ("inputs", "grads", "gradients")

    def __init__(self, gradients: Callable[[list, list, tuple], tuple]) -> None:
        self.inputs: list[torch.Tensor] = []  # each position's input, as the backward pass reaches it
        self.grads: list[torch.Tensor] = []  # and its output's gradient
        self.gradients = gradients  # (inputs, grads, which are needed) -> the shared tensors' gradients


def _linear_gradients(inputs: list[torch.Tensor], grads: list[torch.Tensor], needed: tuple) -> tuple:
    """The weight's [out, in] and the bias's [out] gradients from each position's [N, in] and [N, out]."""
    inputs, grads = torch.cat(inputs), torch.cat(grads)  # [T*N, in], [T*N, out]
    return (grads.t() @ inputs if needed[0] else None,  # autograd casts it to the weight's dtype
            grads.sum(0, dtype=torch.float32) if needed[1] else None)


def _batch_matrix_gradients(inputs: list[torch.Tensor], grads: list[torch.Tensor], needed: tuple) -> tuple:
    """M's gradient [B, m, n] from each position's x [B, n] and output gradient [B, m]."""
    return (torch.bmm(torch.stack(grads, 2), torch.stack(inputs, 1)) if needed[0] else None,)  # [B, m, T] x [B, T, n]


class _HandOut(torch.autograd.Function):
    """The shared tensors, cast once, to every position's product; its backward gathers their gradients."""

    @staticmethod
    def forward(ctx, tape: _Tape, dtype: torch.dtype, *tensors):
        ctx.tape = tape
        ctx.set_materialize_grads(False)  # the products hand back no gradient here: none to allocate
        return tuple(None if t is None else t.to(dtype) if t.dtype != dtype else t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *_grads):
        tape = ctx.tape
        if not tape.grads:
            return (None,) * (2 + len(_grads))
        inputs, grads = tape.inputs, tape.grads
        tape.inputs, tape.grads = [], []
        return (None, None, *tape.gradients(inputs, grads, ctx.needs_input_grad[2:]))


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
        ctx.tape.inputs.append(x.reshape(-1, x.size(-1)))
        ctx.tape.grads.append(grad.reshape(-1, grad.size(-1)))
        return (grad @ weight).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None, None, None, None


class _BatchProduct(torch.autograd.Function):
    """One position's ``M_b x_b``; its backward gives x's gradient and keeps (x, the output's gradient)."""

    @staticmethod
    def forward(ctx, x, matrix, tape: _Tape):
        ctx.tape, ctx.x_dtype = tape, x.dtype
        x = x.to(matrix.dtype)
        ctx.save_for_backward(x, matrix)
        with torch.autocast(x.device.type, enabled=False):  # cast already, once, by _HandOut
            return torch.bmm(matrix, x.unsqueeze(2)).squeeze(2)  # [B, m, n] x [B, n, 1] -> [B, m]

    @staticmethod
    def backward(ctx, grad):
        x, matrix = ctx.saved_tensors
        ctx.tape.inputs.append(x)
        ctx.tape.grads.append(grad)
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return torch.bmm(grad.unsqueeze(1), matrix).squeeze(1).to(ctx.x_dtype), None, None  # [B, 1, m] x [B, m, n]
