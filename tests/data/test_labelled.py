"""Readers and the label vocabulary of nmt.data.labelled: TSV, CoNLL-U (plain and .gz), errors with file:line."""
from __future__ import annotations

import gzip

import pytest

from nmt.data.labelled import (LabelVocab, TaggedSentence, majority_baseline,
                               most_frequent_tag_baseline, parse_vectors, read_conllu, read_tsv)
from nmt.errors import DataError

CONLLU = """# newdoc id = doc1
# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t4:conj\tCopyOf=4
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def test_tsv_header_names_columns(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("label\tsentence\n1\ta fine \"quoted\" film\n\n0\tdull\n")
    rows = read_tsv(path)
    assert [(r.text, r.label) for r in rows] == [('a fine "quoted" film', "1"), ("dull", "0")]
    assert rows[1].where == f"{path}:4"
    rows = read_tsv(path, text_column=1, label_column=0, header=True)
    assert rows[0].label == "1"


def test_tsv_without_header_uses_column_numbers(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("good movie\tpos\nbad\tneg\n")
    rows = read_tsv(path, text_column=0, label_column=1, header=False)
    assert [r.label for r in rows] == ["pos", "neg"]
    with pytest.raises(DataError, match="no header"):
        read_tsv(path, header=False)


def test_tsv_missing_column_names_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("label\tcontent\n1\tgood\n")
    with pytest.raises(DataError, match=rf"{path}:1: no column 'sentence' \(columns: label, content\)"):
        read_tsv(path)
    path.write_text("label\tsentence\n1\tgood\n0\n")
    with pytest.raises(DataError, match=rf"{path}:3: expected at least 2 tab-separated columns, got 1"):
        read_tsv(path)


def test_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    path = tmp_path / "s.conllu"
    path.write_text(CONLLU)
    sentences = read_conllu(path)
    assert sentences[0] == TaggedSentence(["I", "do", "n't", "know", "."], ["PRON", "AUX", "PART", "VERB", "PUNCT"],
                                          f"{path}:4")
    assert sentences[1].words == ["Hello"] and sentences[1].tags == ["INTJ"]
    assert read_conllu(path, "xpos")[0].tags[0] == "PRP"


def test_conllu_gzip_and_bad_line(tmp_path):
    path = tmp_path / "s.conllu.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(CONLLU)
    assert len(read_conllu(path)) == 2
    bad = tmp_path / "bad.conllu"
    bad.write_text("# c\n1\tI\tI\tPRON\n")
    with pytest.raises(DataError, match=rf"{bad}:2: expected 10 tab-separated CoNLL-U columns, got 4"):
        read_conllu(bad)


def test_label_vocab_round_trip_and_unknown_label(tmp_path):
    vocab = LabelVocab.fit(["b", "a", "b", "c", "a", "b"])
    assert vocab.labels == ["b", "a", "c"]
    vocab.save(tmp_path / "labels.json")
    loaded = LabelVocab.load(tmp_path / "labels.json")
    assert loaded.labels == vocab.labels and loaded.encode("c", "x") == 2
    with pytest.raises(DataError, match=r"dev.tsv:7: unknown label 'd'"):
        loaded.encode("d", "dev.tsv:7")


def test_vectors_and_baselines():
    assert parse_vectors("1,2 3,4.5", "f:1") == [[1.0, 2.0], [3.0, 4.5]]
    with pytest.raises(DataError, match="f:1: expected 2 features per time step, got 1"):
        parse_vectors("1,2 3", "f:1")
    with pytest.raises(DataError, match="f:2: expected comma-separated numbers"):
        parse_vectors("1,x", "f:2")
    assert majority_baseline(["a", "a", "b"], ["a", "b", "b", "a"]) == 0.5
    train = [TaggedSentence(["the", "run"], ["DET", "NOUN"], ""), TaggedSentence(["run", "x"], ["VERB", "NOUN"], ""),
             TaggedSentence(["run"], ["VERB"], "")]
    assert most_frequent_tag_baseline(train, [TaggedSentence(["run", "new"], ["VERB", "ADJ"], "")]) == 0.5
