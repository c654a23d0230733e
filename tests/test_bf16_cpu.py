"""bf16 mixed precision on the CPU: the training that tests/test_gpu.py runs on CUDA learns the reverse
task here too, with the decoder's matrix products in bf16.
The bar is the reverse-task bar of the fp32 tests (0.7): in float32 this training reaches 0.77 (154/200).
In bf16, by the decoder's RNNDecoder.AUTOCAST_CELL (one seed each, 2026-11-28, a one-off script that
set it around this training): the module under autocast (the CPU's default, its state bf16) 152/200,
the float32 module 161, the written cell 163."""
from __future__ import annotations

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main


def test_bf16_training_on_the_cpu_learns(tmp_path, one_thread):
    data = write_reverse_corpus(tmp_path / "data", n_train=2500)
    trainer = {"max_epochs": 6, "accelerator": "cpu", "devices": 1, "precision": "bf16-mixed"}
    recipe = write_recipe(tmp_path / "reverse.yaml", reverse_recipe(data, trainer=trainer, optim={"lr": 0.005}))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    out = tmp_path / "hyp.txt"
    assert main(["translate", "--run", str(tmp_path / "run"), "--beam", "5", "-i", str(data / "test.src"), "-o", str(out)]) == 0
    refs = (data / "test.tgt").read_text().splitlines()
    hyps = out.read_text().splitlines()
    assert sum(h == r for h, r in zip(hyps, refs)) / len(refs) >= 0.7
