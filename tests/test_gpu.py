"""On one CUDA device (skipped where there is none): bf16 mixed-precision training learns the
reverse task, the run it writes translates the same on the CPU as on the GPU, and each way of teacher
forcing (RNNDecoder.TEACHER_FORCING) computes the gradients of the default one there."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main
from nmt.contracts import EncoderOutput
from tests.plugins.test_rnn_decoder import as_list, inputs, make

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ACCELERATOR, DEVICE = "gpu", "cuda"


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("gpu")
    data = write_reverse_corpus(base / "data", n_train=2500)
    trainer = {"max_epochs": 6, "accelerator": ACCELERATOR, "devices": 1, "precision": "bf16-mixed"}
    recipe = write_recipe(base / "reverse.yaml", reverse_recipe(data, trainer=trainer, optim={"lr": 0.005}))
    assert main(["train", str(recipe), "--run-dir", str(base / "run")]) == 0
    return base


def translate(base: Path, device: str, *extra: str) -> list[str]:
    out = base / f"{device}{''.join(extra)}.txt"
    assert main(["translate", "--run", str(base / "run"), "--device", device, "-i", str(base / "data" / "test.src"),
                 "-o", str(out), *extra]) == 0
    return out.read_text().splitlines()


def test_bf16_training_on_gpu_learns(gpu_run: Path):
    refs = (gpu_run / "data" / "test.tgt").read_text().splitlines()
    hyps = translate(gpu_run, DEVICE, "--beam", "5")
    # the bar of the CPU tests (tests/test_bf16_cpu.py): fp32 reaches 0.77 with this training on the CPU
    assert sum(h == r for h, r in zip(hyps, refs)) / len(refs) >= 0.7


def test_a_gpu_run_translates_alike_on_the_cpu(gpu_run: Path):
    on_gpu, on_cpu = translate(gpu_run, DEVICE, "--beam", "1"), translate(gpu_run, "cpu", "--beam", "1")
    assert len(on_gpu) == len(on_cpu)
    assert sum(g == c for g, c in zip(on_gpu, on_cpu)) / len(on_gpu) >= 0.95  # float rounding may flip a near tie


def decoder_gradients(way: str, bf16: bool, device: str = DEVICE) -> list[torch.Tensor]:
    """Every gradient (of the inputs and the weights) of the test decoder's teacher forcing run ``way``."""
    decoder = make("gru", teacher_forcing=way).train().to(device)
    encoded, targets = inputs("gru")
    encoded = EncoderOutput(*(t.to(device) for t in (encoded.states, encoded.mask, encoded.pooled, encoded.recurrent)))
    x = targets.to(device).requires_grad_()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        outputs, final, _ = decoder(x, decoder.init_state(encoded), decoder.prepare_memory(encoded))
        loss = outputs.float().square().sum() + sum(s.float().sum() for s in as_list(final))
    loss.backward()
    return [x.grad] + [p.grad for p in decoder.parameters()]


@pytest.mark.parametrize("way", ["hoisted", "shared"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_each_teacher_forcing_way_on_gpu_gives_the_stepwise_gradients(way, bf16):
    """cuDNN's cell stepwise against the written cell (hoisted, shared: SharedLinear's products on CUDA)."""
    for a, b in zip(decoder_gradients("stepwise", bf16), decoder_gradients(way, bf16)):
        assert a.dtype == b.dtype == torch.float32
        tolerance = 0.05 if bf16 else 1e-4
        assert (a - b).abs().max() <= tolerance * max(a.abs().max(), 1e-3), (way, bf16)
