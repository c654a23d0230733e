"""The tasks' data and model sections, and the sentencepiece and Transformer options, refuse what would fail
late, hang or silently change training: one line naming the key, exit code 2, no run directory."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nmt.cli import main
from nmt.errors import DataError, RecipeError
from nmt.recipe import load_recipe

HUGE = 2**63  # what a typo of a few digits too many reaches; int64 no longer holds it

SERIES = {"root": ".", "path": "s.csv", "time_column": "date", "columns": ["a", "b"]}
LABELLED = {"root": ".", "train": "train.tsv", "valid": "valid.tsv"}
TAGGED = {"root": ".", "train": "train.conllu", "valid": "valid.conllu"}
DATA = {"forecast": {**SERIES, "lookback": 24, "horizon": 12}, "regress": {**SERIES, "lookback": 10},
        "generate": {**SERIES, "lookback": 1, "horizon": 6}, "classify": LABELLED, "tag": TAGGED,
        "seq2seq": {"train": {"src": "t.src", "tgt": "t.tgt"}, "valid": {"src": "v.src", "tgt": "v.tgt"},
                    "tokenizer": {"name": "whitespace"}}}
LEARNED = {"name": "transformer", "positions": "learned", "max_positions": 3, "hidden_size": 16, "heads": 2}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """cwd with a small series CSV ``s.csv`` (hourly dates, columns a, b, c)."""
    monkeypatch.chdir(tmp_path)
    rows = [f"2020-01-{1 + h // 24:02d} {h % 24:02d}:00:00,{h},{2 * h},{3 * h}\n" for h in range(24 * 6)]
    (tmp_path / "s.csv").write_text("date,a,b,c\n" + "".join(rows))
    return tmp_path


def write(task: str, data: dict | None = None, model: dict | None = None) -> Path:
    raw = {"name": task, "task": task, "data": {**DATA[task], **(data or {})}, "model": model or {}}
    path = Path(f"{task}.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def refused(task: str, *overrides: str, data: dict | None = None, model: dict | None = None,
            check_data: bool = False) -> str:
    """The message of the RecipeError that loading the task's recipe with ``overrides`` raises."""
    with pytest.raises(RecipeError) as info:
        load_recipe(write(task, data, model), list(overrides), check_data=check_data)
    return str(info.value)


def accepted(task: str, *overrides: str, data: dict | None = None, model: dict | None = None, check_data=False):
    return load_recipe(write(task, data, model), list(overrides), check_data=check_data)


# --- 1. batch sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["forecast", "regress", "generate"])
@pytest.mark.parametrize("key", ["batch_size", "valid_batch_size"])
def test_series_batch_sizes_are_bounded(workdir, task, key):
    assert refused(task, f"data.{key}={HUGE}") == (f"override data.{key}: input should be less than or equal "
                                                    f"to 1000000, got {HUGE}")
    assert getattr(accepted(task, f"data.{key}=1000000").data, key) == 1_000_000


@pytest.mark.parametrize("task", ["classify", "tag"])
@pytest.mark.parametrize("key, limit", [("batch_tokens", 2**31 - 1), ("valid_batch_tokens", 2**31 - 1),
                                        ("max_sentences", 1_000_000)])
def test_label_batch_sizes_are_bounded(workdir, task, key, limit):
    assert refused(task, f"data.{key}={HUGE}") == (f"override data.{key}: input should be less than or equal "
                                                    f"to {limit}, got {HUGE}")
    assert getattr(accepted(task, f"data.{key}={limit}").data, key) == limit


def test_huge_batch_size_is_refused_before_a_run_directory(workdir, capsys):
    code = main(["train", str(write("forecast")), "--run-dir", "run", f"data.batch_size={HUGE}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"nmt: override data.batch_size: input should be less than or equal to 1000000, "
                                 f"got {HUGE}")
    assert not Path("run").exists()


# --- 2. DataLoader workers ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["forecast", "regress", "generate", "classify", "tag"])
def test_num_workers_are_bounded(workdir, task):
    assert refused(task, "data.num_workers=1000000") == ("override data.num_workers: input should be less than "
                                                         "or equal to 256, got 1000000")
    assert accepted(task, "data.num_workers=4").data.num_workers == 4


# --- 3, 4. sentencepiece ------------------------------------------------------------------------

def sentencepiece(**options):
    from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer.Config.model_validate({"vocab_size": 60, **options})


@pytest.mark.parametrize("nbest", [HUGE, 513, -2, 0, 1, True])
def test_sampling_nbest_is_what_sentencepiece_takes(nbest):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        sentencepiece(model_type="unigram", sampling={"alpha": 0.1, "nbest": nbest})
    assert info.value.errors()[0]["loc"] == ("sampling", "nbest")


@pytest.mark.parametrize("nbest", [-1, 2, 64, 512])
def test_sampling_nbest_within_bounds(nbest):
    assert sentencepiece(model_type="unigram", sampling={"alpha": 0.1, "nbest": nbest}).sampling.nbest == nbest


def test_nbest_in_a_recipe_names_the_key(workdir):
    message = refused("tag", f"data.tokenizer={{name: sentencepiece, model_type: unigram, vocab_size: 60, "
                             f"sampling: {{alpha: 0.1, nbest: {HUGE}}}}}")
    assert message == (f"override data.tokenizer.sampling.nbest: input should be less than or equal to 512, "
                       f"got {HUGE}")


@pytest.mark.parametrize("key, value, expected", [
    ("character_coverage", 1e-300, "greater than or equal to 0.98"),
    ("character_coverage", 0.97, "greater than or equal to 0.98"),
    ("input_sentence_size", 1, "greater than or equal to 101"),
    ("input_sentence_size", 100, "greater than or equal to 101"),
    ("vocab_size", 1, "greater than or equal to 6"),
    ("vocab_size", 5, "greater than or equal to 6"),
])
@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char", "word"])
def test_sentencepiece_limits_are_the_recipes(workdir, key, value, expected, model_type):
    """sentencepiece's trainer refuses these for every model type, as INTERNAL errors after the run began."""
    message = refused("classify", f"data.tokenizer={{name: sentencepiece, model_type: {model_type}, {key}: {value}}}")
    assert message == f"override data.tokenizer.{key}: input should be {expected}, got {value}"


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char", "word"])
def test_sentencepiece_trains_at_its_lowest_limits(tmp_path, model_type):
    from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer

    config = sentencepiece(model_type=model_type, vocab_size=6, character_coverage=0.98, input_sentence_size=101)
    tokenizer = SentencePieceTokenizer.train(config, ["a aa a"] * 200, tmp_path, "sp")
    assert tokenizer.decode(tokenizer.encode("a aa")) == "a aa"


def test_vocabulary_smaller_than_the_characters_names_vocab_size(tmp_path):
    from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer

    with pytest.raises(RecipeError) as info:
        SentencePieceTokenizer.train(sentencepiece(vocab_size=8), ["abcdefgh ijk"] * 200, tmp_path, "src")
    assert str(info.value) == ("data.tokenizer.vocab_size: expected at least 16 for tokenizer 'src' (4 special "
                               "pieces and 12 characters of the training text), got 8; or lower character_coverage")


# --- 6. data.start and data.end are times ---------------------------------------------------------

@pytest.mark.parametrize("end", ["2020-1-3", "2020/01/03", "2020-01-03", "2020-01-03 00:00", "2020-01-03T00:00:00"])
def test_end_is_read_as_a_date(workdir, end):
    """Compared as text, 2020-1-3 and 2020/01/03 came after every row and kept them all."""
    from nmt.data.series import read_series

    series = read_series("s.csv", ["a"], "date", end=end)
    assert len(series) == 48 and series.times[-1] == "2020-01-02 23:00:00"


def test_start_is_read_as_a_date(workdir):
    from nmt.data.series import read_series

    series = read_series("s.csv", ["a"], "date", start="2020/1/5 12:00")
    assert series.times[0] == "2020-01-05 12:00:00" and len(series) == 36


@pytest.mark.parametrize("key", ["start", "end"])
@pytest.mark.parametrize("value", ["notadate", "2020-13-01", "01/03/2020", ""])
def test_a_time_bound_that_is_no_time_is_refused(workdir, key, value):
    message = refused("forecast", data={key: value})
    assert message == (f"forecast.yaml: data.{key}: expected a date (2020-01-03, 2020-01-03 12:00) "
                       f"or a number, got {value!r}")


def test_unquoted_dates_and_numbers_are_times(workdir):
    """YAML reads 2020-01-03 as a date and 2020 as a number; a recipe means the time it wrote."""
    recipe = accepted("forecast", "data.start=2020-01-02", "data.end=2020-01-05 06:00:00")
    assert (recipe.data.start, recipe.data.end) == ("2020-01-02", "2020-01-05 06:00:00")
    assert accepted("forecast", "data.start=2019").data.start == "2019"


def test_start_after_end_is_refused(workdir):
    assert refused("forecast", "data.start=2020-01-05", "data.end=2020/1/3") == (
        "override data.end: expected a time after data.start (2020-01-05), got 2020/1/3: no row would be kept")


def test_numeric_times_still_compare_as_numbers(tmp_path):
    from nmt.data.series import read_series

    (tmp_path / "n.csv").write_text("t,a\n" + "".join(f"{t},{t}\n" for t in range(1, 20)))
    assert read_series(tmp_path / "n.csv", ["a"], "t", start="9", end="11").times == ["9", "10"]


def test_a_date_bound_on_numeric_times_is_an_error(tmp_path):
    from nmt.data.series import read_series

    (tmp_path / "n.csv").write_text("t,a\n1,1\n2,2\n")
    with pytest.raises(DataError, match="the time is a number; data.start '2020-01-03' is a date"):
        read_series(tmp_path / "n.csv", ["a"], "t", start="2020-01-03")


def test_dates_order_as_dates(tmp_path):
    """2020-1-10 follows 2020-1-9: as text it came first and the file was refused as out of order."""
    from nmt.data.series import read_series

    (tmp_path / "d.csv").write_text("t,a\n2020-1-9,1\n2020-1-10,2\n")
    assert read_series(tmp_path / "d.csv", ["a"], "t").times == ["2020-1-9", "2020-1-10"]


# --- 7. column lists and counts ------------------------------------------------------------------

def test_empty_targets_are_refused(workdir):
    assert refused("forecast", "data.targets=[]") == ("override data.targets: expected at least one column "
                                                      "(leave the key out for the default), got []")


@pytest.mark.parametrize("key", ["columns", "targets"])
def test_duplicate_columns_are_refused(workdir, key):
    assert refused("regress", f"data.{key}=[a, a, b]") == (
        f"override data.{key}: expected distinct column names; 'a' appears more than once, got ['a', 'a', 'b']")


def test_derived_column_named_like_a_real_one(workdir):
    message = refused("forecast", "data.means={a: [b, c]}", check_data=True)
    assert message == "override data.means.a: 'a' is a column of s.csv already; give the derived column another name"
    assert accepted("forecast", "data.means={bc: [b, c]}", "data.columns=[a, bc]", check_data=True)


@pytest.mark.parametrize("override, key", [("data.split={train: true}", "data.split.train"),
                                           ("data.split={train: 0.7, valid: false}", "data.split.valid")])
def test_boolean_split_sizes_are_refused(workdir, override, key):
    assert refused("forecast", override).startswith(f"override {key}: expected a row count or a fraction")


@pytest.mark.parametrize("task, key", [("forecast", "lookback"), ("forecast", "horizon"), ("regress", "offset"),
                                       ("regress", "stride"), ("classify", "max_length"), ("tag", "batch_tokens")])
def test_boolean_counts_are_refused(workdir, task, key):
    assert refused(task, f"data.{key}=true") == f"override data.{key}: input should be a valid integer, got True"


# --- 8. learned positions against the longest input ------------------------------------------------

@pytest.mark.parametrize("task, key, longest, what", [
    ("classify", "model.encoder", 200, "data.max_length, the longest training input"),
    ("tag", "model.encoder", 250, "data.max_length, the longest training input"),
    ("tag", "model.word_encoder", 250, "data.max_length, the longest training input"),
    ("forecast", "model.encoder", 6, "data.lookback / model.segment, the encoder's steps"),
    ("regress", "model.encoder", 10, "data.lookback, the encoder's steps"),
    ("generate", "model.encoder", 6, "data.horizon, the encoder's steps"),
])
def test_learned_positions_shorter_than_the_input(workdir, task, key, longest, what):
    model = {"segment": 4} if task == "forecast" else {}
    message = refused(task, f"{key}={{{', '.join(f'{k}: {v}' for k, v in LEARNED.items())}}}", model=model)
    assert message == f"override {key}.max_positions: expected at least {longest} ({what}), got 3"


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_positions_that_reach_the_longest_input(workdir, positions):
    encoder = {**LEARNED, "positions": positions, "max_positions": 200}
    assert accepted("classify", model={"encoder": encoder}).components["model.encoder"].config.max_positions == 200
    if positions == "sinusoidal":  # max_positions is for learned positions only
        assert accepted("classify", model={"encoder": {**encoder, "max_positions": 3}})


@pytest.mark.parametrize("override, message", [
    ("data.num_workers=1000000", "data.num_workers: input should be less than or equal to 256"),
    ("data.batch_tokens=9223372036854775808", "data.batch_tokens: input should be less than or equal to 2147483647"),
    ("data.max_sentences=true", "data.max_sentences: input should be a valid integer, got True"),
])
def test_translation_batches_and_workers_are_bounded(workdir, override, message):
    assert message in refused("seq2seq", override)


def test_translation_learned_positions_shorter_than_the_longest_source(workdir):
    assert refused("seq2seq", model={"encoder": LEARNED}).endswith(
        "model.encoder.max_positions: expected at least 100 (data.max_length, the longest training source), got 3")


def test_adversarial_training_is_bounded(workdir):
    assert "model.embedding.adversarial: input should be less than or equal to 100" in refused(
        "classify", "model.embedding.adversarial=1e300")
