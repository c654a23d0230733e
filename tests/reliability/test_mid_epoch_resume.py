"""A run stopped in the middle of an epoch and resumed trains exactly what an uninterrupted run trains.

The data module's checkpointed state says how many of the epoch's batches were trained, so the
resumed run goes on with the rest of that epoch's order instead of starting the epoch over. With
dropout off, the two runs must end with the same weights.
"""
from __future__ import annotations

import torch

from conftest import write_reverse_corpus
from nmt.recipe import validate_recipe
from nmt.train import train_recipe
from reliability_support import small_recipe


def weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return state["state_dict"], state["global_step"]


def test_mid_epoch_resume_trains_the_rest_of_the_epoch(tmp_path):
    torch.set_num_threads(1)
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=20)

    def recipe(max_steps: int):
        # 300 sentences in batches of 200 tokens: about 15 batches per epoch; validation (and so a
        # checkpoint) every 4 batches; no dropout, so both runs draw the same random numbers.
        return validate_recipe(small_recipe(data, data={"batch_tokens": 200},
                                            model={"embedding": {"size": 16, "dropout": 0.0},
                                                   "encoder": {"name": "gru", "hidden_size": 16, "dropout": 0.0}},
                                            trainer={"max_epochs": 1, "max_steps": max_steps, "val_check_interval": 4}),
                               tmp_path / "r.yaml")

    whole = train_recipe(recipe(-1), tmp_path / "whole")
    resumed = train_recipe(recipe(8), tmp_path / "resumed")  # stops mid-epoch after the checkpoint at step 8
    _, steps = weights(resumed)
    assert steps == 8
    train_recipe(recipe(-1), tmp_path / "resumed")

    expected, expected_steps = weights(whole)
    got, got_steps = weights(resumed)
    assert got_steps == expected_steps > 8
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
