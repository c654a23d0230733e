"""Tests of the Bahdanau and Luong attentions: masked softmax, context, size checks."""
import importlib

import pytest
import torch

from nmt.errors import RecipeError

BahdanauAttention = importlib.import_module("nmt_builtin.bahdanau").BahdanauAttention
LuongAttention = importlib.import_module("nmt_builtin.luong").LuongAttention


def build(name: str, query_size: int, key_size: int, **options) -> torch.nn.Module:
    cls = {"bahdanau": BahdanauAttention, "luong": LuongAttention}[name]
    assert cls.registered_name == name
    torch.manual_seed(0)
    return cls(cls.Config(**options), query_size, key_size)


def random_mask(batch_size: int, length: int) -> torch.Tensor:
    mask = torch.rand(batch_size, length) < 0.6
    mask[torch.arange(batch_size), torch.randint(length, (batch_size,))] = True  # >= 1 real position per row
    return mask


CASES = [("bahdanau", {}), ("bahdanau", {"hidden_size": 3}), ("luong", {"score": "general"}), ("luong", {"score": "dot"})]


@pytest.mark.parametrize("name,options", CASES)
def test_weights_sum_to_one_over_real_positions_and_are_zero_on_padding(name, options):
    key_size = 8 if options.get("score") == "dot" else 6
    attention = build(name, 8, key_size, **options)
    torch.manual_seed(1)
    keys, values, query = torch.randn(5, 9, key_size), torch.randn(5, 9, 4), torch.randn(5, 8)
    mask = random_mask(5, 9)
    context, weights = attention(query, attention.prepare(keys), values, mask)
    assert context.shape == (5, 4) and weights.shape == (5, 9)
    assert torch.all(weights[~mask] == 0)
    assert torch.all(weights[mask] > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))
    torch.testing.assert_close(context, torch.einsum("bs,bsv->bv", weights, values))


@pytest.mark.parametrize("name,options", CASES)
def test_padding_content_does_not_change_the_result(name, options):
    attention = build(name, 8, 8, **options)
    keys, values, query = torch.randn(2, 5, 8), torch.randn(2, 5, 3), torch.randn(2, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    noisy_keys, noisy_values = keys.clone(), values.clone()
    noisy_keys[1, 2:] += 100.0
    noisy_values[1, 2:] += 100.0
    a = attention(query, attention.prepare(keys), values, mask)
    b = attention(query, attention.prepare(noisy_keys), noisy_values, mask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_bahdanau_hidden_size_defaults_to_query_size():
    attention = build("bahdanau", 7, 5)
    assert attention.prepare(torch.randn(2, 3, 5)).shape == (2, 3, 7)
    assert build("bahdanau", 7, 5, hidden_size=11).prepare(torch.randn(2, 3, 5)).shape == (2, 3, 11)


def test_luong_dot_needs_matching_sizes():
    with pytest.raises(RecipeError, match="dot attention needs key size == decoder hidden size \\(got 6 vs 8\\)"):
        build("luong", 8, 6, score="dot")
    assert build("luong", 8, 6, score="general").prepare(torch.randn(1, 2, 6)).shape == (1, 2, 8)
