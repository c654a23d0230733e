"""The Multi30k ensemble and choice scripts end to end on a tiny stand-in for the data: ensemble.sh trains both members,
averages each, scores the six candidates on the dev set (choose.sh), and only the chosen one reads the test sets."""
from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import write_reverse_corpus

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "translation" / "multi30k" / "ensemble.sh"
CHOOSE = SCRIPT.with_name("choose.sh")
CANDIDATES = ["a-best", "a-averaged", "b-best", "b-averaged", "ensemble-best", "ensemble-averaged"]


def stand_in_multi30k(root: Path) -> Path:
    """The reverse task under the names of Multi30k en-de (gzip), so the recipe's paths resolve."""
    corpus = write_reverse_corpus(root / "reverse", n_train=300, n_dev=20)
    (root / "multi30k").mkdir()
    for split, name in (("train", "train"), ("dev", "val"), ("test", "test_2016_flickr"), ("test", "test_2017_flickr")):
        for side, lang in (("src", "en"), ("tgt", "de")):
            with gzip.open(root / "multi30k" / f"{name}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write((corpus / f"{split}.{side}").read_text())
    return root


def test_ensemble_script_chooses_on_dev_and_tests_once(tmp_path):
    data = stand_in_multi30k(tmp_path / "data")
    env = {**os.environ, "NMT_DATA": str(data), "RUN_PREFIX": str(tmp_path / "ens"), "KEEP": "2",
           "BUDGET": "00:00:10:00", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MEMBER_B": "seed=7 model.embedding.dropout=0.3", "ALPHAS": "0.6 1.0"}
    tiny = ["data.tokenizer={name: whitespace}", "data.joint_vocab=false", "model.embedding.size=16",
            "model.embedding.tie_target=false", "model.encoder.hidden_size=16", "model.decoder.hidden_size=32",
            "trainer.max_epochs=2", "data.batch_tokens=400", "trainer.precision=32-true"]
    done = subprocess.run(["bash", str(SCRIPT), "en-de", *tiny], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    scores = dict(re.findall(r"^(\S+) +(\d+\.\d\d)$", out, re.M))
    assert list(scores) == CANDIDATES
    chosen = re.search(r"^chosen on dev: (\S+) \((\d+\.\d\d)\)$", out, re.M)
    assert chosen and float(chosen[2]) == max(float(v) for v in scores.values()) and scores[chosen[1]] == chosen[2]
    # then the chosen system's length penalty, on dev: the better of alpha 0.6 (the candidates' score) and 1.0
    other = re.search(r"^with alpha 1.0: (\d+\.\d\d)$", out, re.M)
    chosen_alpha = re.search(r"^chosen alpha: (\S+) \((\d+\.\d\d)\)$", out, re.M)
    assert other and chosen_alpha
    assert float(chosen_alpha[2]) == max(float(chosen[2]), float(other[1]))
    assert chosen_alpha[1] == ("1.0" if float(other[1]) > float(chosen[2]) else "0.6")
    assert re.search(rf"^test set .*; {chosen[1]}, beam 5, alpha {chosen_alpha[1]}\)$", out, re.M)
    assert (tmp_path / f"ens.dev-alpha1.0.{chosen[1]}.hyp").exists()
    for member in "ab":
        assert (tmp_path / f"ens-{member}" / "checkpoints" / "averaged.ckpt").exists()
    # MEMBER_B's overrides reached member b alone (a keeps the recipe's seed and dropout)
    recipes = {m: yaml.safe_load((tmp_path / f"ens-{m}" / "recipe.yaml").read_text()) for m in "ab"}
    assert (recipes["b"]["seed"], recipes["b"]["model"]["embedding"]["dropout"]) == (7, 0.3)
    assert (recipes["a"]["seed"], recipes["a"]["model"]["embedding"]["dropout"]) == (1234, 0.2)
    for test in ("test_2016_flickr", "test_2017_flickr"):
        assert re.search(rf"^{test} +bleu +\d+\.\d\d  nrefs:1\|case:mixed", out, re.M)
        assert len((tmp_path / f"ens.{test}.hyp").read_text().splitlines()) == 20
    # the dev outputs of every candidate are kept beside the members; the test sets were translated once each
    assert sorted(p.name for p in tmp_path.glob("ens.dev.*.hyp")) == sorted(f"ens.dev.{c}.hyp" for c in CANDIDATES)

    # KEEP above what a member kept (2 validations each): it averages those, and says so
    again = subprocess.run(["bash", str(SCRIPT), "en-de"], env={**env, "TRAIN": "0", "KEEP": "3", "ALPHAS": "0.6"},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for member in "ab":
        assert f"ens-{member} kept 2 validations, fewer than KEEP=3: averaging those" in again.stderr
        averaged = torch.load(tmp_path / f"ens-{member}" / "checkpoints" / "averaged.ckpt", weights_only=True)
        assert len(averaged["averaged_from"]) == 2

    # choose.sh alone over runs that exist (what ensemble.sh calls): the same translations score the same
    picked = subprocess.run(["bash", str(CHOOSE), "en-de", f"one=--run {tmp_path}/ens-a --checkpoint best",
                             f"both=--run {tmp_path}/ens-a --run {tmp_path}/ens-b --checkpoint averaged"],
                            env={**env, "PREFIX": str(tmp_path / "pick"), "ALPHAS": "0.6"}, capture_output=True, text=True,
                            timeout=300)
    assert picked.returncode == 0, picked.stderr[-2000:]
    picks = dict(re.findall(r"^(\S+) +(\d+\.\d\d)$", picked.stdout, re.M))
    assert picks == {"one": scores["a-best"], "both": scores["ensemble-averaged"]}
    assert re.search(r"^system: nmt translate --run \S+ens-a (--run \S+ens-b )?--checkpoint \w+ --beam 5 --alpha 0.6$",
                     picked.stdout, re.M)
    assert all((tmp_path / f"pick.{test}.hyp").exists() for test in ("test_2016_flickr", "test_2017_flickr"))


def test_choose_script_refuses_a_candidate_without_a_name(tmp_path):
    for args, said in ((["en-de", "--run runs/a"], "candidate '--run runs/a': expected NAME="),
                       (["en-de", "a=--run x", "a=--run y"], "candidate 'a=--run y': expected NAME="),
                       (["en-de"], "no candidates"), ([], "usage: choose.sh PAIR NAME='nmt translate options'")):
        done = subprocess.run(["bash", str(CHOOSE), *args], env={**os.environ, "PREFIX": str(tmp_path / "p")},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr
        assert not list(tmp_path.iterdir())  # nothing written


def test_ensemble_script_names_a_member_that_kept_no_validation(tmp_path):
    """TRAIN=0 over members that never trained (no checkpoints folder): one message naming the member."""
    env = {**os.environ, "RUN_PREFIX": str(tmp_path / "none"), "TRAIN": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(SCRIPT), "en-de"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"ensemble.sh: {tmp_path}/none-a kept no validation (checkpoints/step-<step>.ckpt): "
                                   "train it longer")


def test_run_script_tests_on_the_data_root_it_trained_from(tmp_path):
    """run.sh en-de data.root=X trained on X, then looked for the test sets under NMT_DATA (or the default)."""
    data = stand_in_multi30k(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "NMT_DATA": str(elsewhere), "RUN_DIR": str(tmp_path / "run"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    tiny = [f"data.root={data}", "data.tokenizer={name: whitespace}", "data.joint_vocab=false",
            "model.embedding.size=16", "model.embedding.tie_target=false", "model.encoder.hidden_size=16",
            "model.decoder.hidden_size=32", "trainer.max_epochs=1", "data.batch_tokens=400"]
    done = subprocess.run(["bash", str(SCRIPT.with_name("run.sh")), "en-de", *tiny], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping" not in done.stdout, done.stdout
    for test in ("test_2016_flickr", "test_2017_flickr"):
        assert re.search(rf"^{test} +bleu +\d+\.\d\d  nrefs:1", done.stdout, re.M), done.stdout
