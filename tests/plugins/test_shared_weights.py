"""SharedLinear and SharedBatchMatrix: the weights every position of a recurrence uses (or a matrix per
batch entry, an attention's keys and values), their gradients computed once for all positions: the
same gradients as autograd's position-by-position ones, in fewer operations, the weight cast once
under autocast, and nothing kept alive after the step."""
import gc
import importlib
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

shared_weights = importlib.import_module("nmt_builtin.shared_weights")
SharedLinear, SharedBatchMatrix = shared_weights.SharedLinear, shared_weights.SharedBatchMatrix

B, D, T = 3, 6, 5  # rows, width, positions


class Ops(TorchDispatchMode):
    """The aten operations run (forward and backward): their names, and the shapes of their first argument."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.shapes: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.names.append(func.overloadpacket.__name__)
            self.shapes.append(tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ())
        return func(*args, **(kwargs or {}))


def recurrence(weight, bias, h0, positions: int, shared: bool):
    """h_t = tanh(h_{t-1} W^T + b) for ``positions`` steps; the sum of the states."""
    linear = SharedLinear(weight, bias) if shared else (lambda x: F.linear(x, weight, bias))
    h, total = h0, 0
    for _ in range(positions):
        h = torch.tanh(linear(h))
        total = total + h.float().sum()
    return total


def parameters(bias: bool = True):
    torch.manual_seed(0)
    weight = torch.randn(D, D, requires_grad=True)
    return weight, (torch.randn(D, requires_grad=True) if bias else None), torch.randn(B, D, requires_grad=True)


@pytest.mark.parametrize("bias", [True, False])
def test_the_gradients_are_autograds(bias):
    grads = {}
    for shared in (False, True):
        weight, b, h0 = parameters(bias)
        recurrence(weight, b, h0, T, shared).backward()
        grads[shared] = [weight.grad, h0.grad] + ([b.grad] if bias else [])
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b)


def per_position_ops(shared: bool) -> float:
    counts = []
    for positions in (T, 2 * T):
        weight, bias, h0 = parameters()
        with Ops() as ops:
            recurrence(weight, bias, h0, positions, shared).backward()
        counts.append(len(ops.names))
    return (counts[1] - counts[0]) / T


def test_each_position_spends_four_operations_less():
    """Autograd's weight gradient at each position is a product and an addition, and the bias's a sum
    and an addition: four operations a position that SharedLinear does once for all positions."""
    assert per_position_ops(False) - per_position_ops(True) == 4


def test_under_autocast_the_weight_is_cast_once_and_the_gradients_are_close():
    weight, bias, h0 = parameters()
    with Ops() as ops, torch.autocast("cpu", dtype=torch.bfloat16):
        total = recurrence(weight, bias, h0, T, shared=True)
    casts = [shape for name, shape in zip(ops.names, ops.shapes) if name == "_to_copy"]
    assert casts.count((D, D)) == 1 and casts.count((D,)) == 1  # the weight and the bias once, not at each position
    total.backward()
    assert weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
    exact, b_exact, h_exact = parameters()
    recurrence(exact, b_exact, h_exact, T, shared=False).backward()
    for a, b in ((weight.grad, exact.grad), (bias.grad, b_exact.grad), (h0.grad, h_exact.grad)):
        assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_nothing_is_kept_alive_after_the_step():
    """What the positions leave for the weight's gradient is gone once it is computed, and the handed-out
    weight goes with its graph: no reference cycle through autograd's nodes (which Python's collector
    cannot see) keeps a step's tensors."""
    weight, bias, h0 = parameters()
    gc.disable()
    try:
        shared = SharedLinear(weight, bias)
        handed_out = weakref.ref(shared.weight)
        total = sum(torch.tanh(shared(h0)).sum() for _ in range(T))
        total.backward()
        assert shared.tape.inputs == [] and shared.tape.grads == []
        del shared, total
        assert handed_out() is None
    finally:
        gc.enable()


def batch_recurrence(matrix, h0, positions: int, shared: bool):
    """h_t = tanh(M_b h_{t-1}) with a matrix per batch entry, M [B, D, D] (as an attention's keys or values)."""
    product = SharedBatchMatrix(matrix) if shared else (lambda x: torch.bmm(matrix, x.unsqueeze(2)).squeeze(2))
    h, total = h0, 0
    for _ in range(positions):
        h = torch.tanh(product(h))
        total = total + h.float().sum()
    return total


def batch_parameters():
    torch.manual_seed(0)
    return torch.randn(B, D, D, requires_grad=True), torch.randn(B, D, requires_grad=True)


def test_a_matrix_per_batch_entry_gets_autograds_gradients_in_two_operations_less_a_position():
    """SharedBatchMatrix: M's gradient one batched product over all positions, not a product and an
    addition at each; the same gradients of M and of the first state; nothing left on the tape."""
    grads, ops_at = {}, {}
    for shared in (False, True):
        matrix, h0 = batch_parameters()
        batch_recurrence(matrix, h0, T, shared).backward()
        grads[shared] = [matrix.grad, h0.grad]
        for positions in (T, 2 * T):
            matrix, h0 = batch_parameters()
            with Ops() as ops:
                batch_recurrence(matrix, h0, positions, shared).backward()
            ops_at[shared, positions] = len(ops.names)
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b)
    per_position = {shared: (ops_at[shared, 2 * T] - ops_at[shared, T]) / T for shared in (False, True)}
    assert per_position[False] - per_position[True] == 2


def test_a_matrix_per_batch_entry_is_cast_once_under_autocast():
    matrix, h0 = batch_parameters()
    with Ops() as ops, torch.autocast("cpu", dtype=torch.bfloat16):
        shared = SharedBatchMatrix(matrix)
        total = sum(torch.tanh(shared(h0)).float().sum() for _ in range(T))
    casts = [shape for name, shape in zip(ops.names, ops.shapes) if name == "_to_copy"]
    assert casts.count((B, D, D)) == 1  # once, not at each position (a plain tensor: autocast caches no cast of it)
    total.backward()
    assert matrix.grad.dtype == torch.float32 and shared.tape.inputs == [] and shared.tape.grads == []
    exact, h_exact = batch_parameters()
    (sum(torch.tanh(torch.bmm(exact, h_exact.unsqueeze(2)).squeeze(2)).sum() for _ in range(T))).backward()
    assert (matrix.grad - exact.grad).abs().max() < 0.05 * exact.grad.abs().max()
