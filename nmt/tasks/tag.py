"""Sequence tagging as a task: one label per word (part of speech, named entities ...).

Follow one sentence: a CoNLL-U sentence gives words and tags; the tokenizer plugin splits each
word into pieces on its own (``encode_words``), so piece boundaries never cross words; the
encoder plugin runs over all pieces; each word is tagged once, from the state of its first piece
(a bidirectional encoder has read the rest of the word by then), or with ``model.word_state:
first_last`` from its first and last pieces side by side (the last piece holds the suffix, the
strongest clue to a word's part of speech); with ``model.word_embedding`` a learned vector of
the whole word (frequent words only; the rest, and a random share of training words, are <unk>)
joins them; an optional second encoder (``model.word_encoder``) runs over these word vectors, one
step per word; a linear layer scores each tag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field, PositiveInt

from nmt import registry
from nmt.contracts import build_encoder
from nmt.data.labelled import Example, TaggedSentence, read_conllu
from nmt.data.prepared import MAX_LENGTH
from nmt.recipe import EncoderSection, Recipe, Section, TokenizerSection, resolve_data_path
from nmt.registry import register
from nmt.runs import fitted_dir
from nmt.tasks.labels import InputEmbedding, LabelTask, drop_to_unk
from nmt.tasks.limits import MAX_BATCH_SENTENCES, MAX_BATCH_TOKENS, MAX_WORKERS, check_encoder_length
from nmt.tasks.tokenizers import load_tokenizers, refuse_sampling, train_tokenizers


class TagData(Section):
    root: Optional[str] = None  # default: $NMT_DATA, else ../shared/data
    train: str
    valid: str
    format: Literal["conllu"] = "conllu"  # .conllu or .conllu.gz
    tag_column: Literal["upos", "xpos", "deprel"] = "upos"
    tokenizer: TokenizerSection = {"name": "whitespace"}
    # training sentences longer than this (in pieces) are skipped; bounded as in translation, since
    # nmt predict reads lines of up to 4 x this many pieces by default
    max_length: int = Field(250, gt=0, le=MAX_LENGTH, strict=True)
    batch_tokens: int = Field(4000, gt=0, le=MAX_BATCH_TOKENS, strict=True)  # padded pieces per training batch
    max_sentences: Optional[int] = Field(None, gt=0, le=MAX_BATCH_SENTENCES, strict=True)
    valid_batch_tokens: int = Field(8000, gt=0, le=MAX_BATCH_TOKENS, strict=True)
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS, strict=True)  # DataLoader processes, each a copy of the data
    encoding_errors: str = Field("strict", pattern="^(strict|replace)$")


class WordEmbedding(Section):
    """A vector per whole word beside its pieces: the word's identity, which pieces only spell out."""

    size: int = Field(100, gt=0, le=65536)
    min_freq: PositiveInt = 2  # rarer training words share <unk>
    # Training only: each word becomes <unk> with this probability, so <unk> is learned from
    # contexts rather than from the rare words alone (Kiperwasser and Goldberg 2016).
    word_dropout: float = Field(0.25, ge=0.0, lt=1.0)


class TagModel(Section):
    embedding: InputEmbedding = InputEmbedding()
    encoder: EncoderSection = {"name": "lstm"}
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on each word's state, before the output layer
    word_state: Literal["first", "first_last"] = "first"  # which piece states represent a word
    word_embedding: Optional[WordEmbedding] = None  # e.g. {size: 100}: a learned vector per frequent word
    word_encoder: Optional[EncoderSection] = None  # e.g. {name: lstm, hidden_size: 256}: a second encoder over words


WORDS_PREFIX = "words"  # the whole-word vocabulary of model.word_embedding: fitted/words.vocab.json


@register("task", "tag")
class TagTask(LabelTask):
    """Sequence tagging: a tag per word, read from the states of the word's subword pieces."""

    DataConfig = TagData
    ModelConfig = TagModel

    def __init__(self, recipe: Recipe, run_dir: Path, tokenizer, labels, words=None):
        super().__init__(recipe, run_dir, tokenizer, labels)
        word_size = self.encoder.output_size * (2 if recipe.model.word_state == "first_last" else 1)
        self.words = words  # the whole-word vocabulary (a whitespace tokenizer), with model.word_embedding
        if words is not None:
            self.word_embed = torch.nn.Embedding(len(words), recipe.model.word_embedding.size, padding_idx=words.pad_id)
            word_size += recipe.model.word_embedding.size
        self.word_encoder = None
        if recipe.model.word_encoder is not None:
            self.word_encoder = build_encoder(recipe.components["model.word_encoder"], input_size=word_size)
            word_size = self.word_encoder.output_size
        self.output = torch.nn.Linear(word_size, len(labels))

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        refuse_sampling(recipe)
        for key in ("model.encoder", "model.word_encoder"):  # pieces, and the words they spell (no more of those)
            check_encoder_length(recipe, key, recipe.data.max_length, "data.max_length, the longest training input")
        if check_data:
            for split in (recipe.data.train, recipe.data.valid):
                resolve_data_path(split, recipe.data.root)

    @classmethod
    def read_split(cls, recipe: Recipe, split: str) -> list[TaggedSentence]:
        data = recipe.data
        return read_conllu(resolve_data_path(split, data.root), data.tag_column, encoding_errors=data.encoding_errors)

    @classmethod
    def prepare_run(cls, recipe: Recipe, run_dir: Path) -> None:
        sentences = cls.read_split(recipe, recipe.data.train)
        cls.fit_labels(run_dir, (t for s in sentences for t in s.tags))
        directory = fitted_dir(run_dir)
        if recipe.model.word_embedding is not None and not (directory / f"{WORDS_PREFIX}.vocab.json").exists():
            vocabulary = cls.word_vocabulary(recipe)
            config = vocabulary.Config(min_freq=recipe.model.word_embedding.min_freq)
            vocabulary.train(config, (w for s in sentences for w in s.words), directory, WORDS_PREFIX)
        train_tokenizers(recipe, run_dir, [" ".join(s.words) for s in sentences], None, joint=False)

    @staticmethod
    def word_vocabulary(recipe: Recipe) -> type:
        """The registered ``whitespace`` tokenizer: one id per whole word."""
        return registry.get("tokenizer", "whitespace", where=f"{recipe.path}: model.word_embedding")

    @classmethod
    def from_run(cls, recipe: Recipe, run_dir: Path) -> "TagTask":
        tokenizer, _ = load_tokenizers(recipe, run_dir, joint=False, target=False)
        words = None
        if recipe.model.word_embedding is not None:
            words = cls.word_vocabulary(recipe).load(fitted_dir(run_dir), WORDS_PREFIX)
        return cls(recipe, run_dir, tokenizer, cls.load_labels(run_dir), words)

    def forward(self, batch, perturbation: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B,W,C] for each word of a padded batch."""
        states = self.encode(batch["src"], batch["src_len"], perturbation).states  # [B,S,D]
        words = self.gather_words(states, batch["word_starts"])  # [B,W,D]
        if self.recipe.model.word_state == "first_last":
            words = torch.cat([words, self.gather_words(states, batch["word_ends"])], dim=-1)  # [B,W,2D]
        if self.words is not None:
            words = torch.cat([words, self.embed_whole_words(batch["word_ids"])], dim=-1)  # [B,W,D+E]
        if self.word_encoder is not None:
            words = self.word_encoder(words, batch["word_len"]).states  # [B,W,D']
        return self.output(self.output_dropout(words))  # [B,W,C]

    def embed_whole_words(self, word_ids: torch.Tensor) -> torch.Tensor:
        """Whole-word ids [B,W] to vectors [B,W,E]; in training a share of the words become <unk>."""
        if self.training:
            word_ids = drop_to_unk(word_ids, self.recipe.model.word_embedding.word_dropout,
                                   self.words.pad_id, self.words.unk_id)  # [B,W]
        return self.embed_dropout(self.word_embed(word_ids))  # [B,W,E]

    @staticmethod
    def gather_words(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The state [B,W,D] at one piece position [B,W] of each word."""
        return torch.gather(states, 1, positions.unsqueeze(-1).expand(-1, -1, states.size(-1)))

    def encode_words(self, words: list[str]) -> tuple[list[int], list[int]]:
        """(piece ids of the sentence, position of each word's first piece)."""
        ids: list[int] = []
        starts: list[int] = []
        for pieces in self.tokenizer.encode_words(words):
            starts.append(len(ids))
            ids.extend(pieces or [self.tokenizer.unk_id])  # a word must own at least one position
        return ids, starts

    def word_ids(self, words: list[str]) -> list[int] | None:
        """One whole-word id per word (<unk> for rare words), or None without model.word_embedding."""
        if self.words is None:
            return None
        return [ids[0] if len(ids) == 1 else self.words.unk_id for ids in self.words.encode_words(words)]

    def examples(self, split: str) -> list[Example]:
        examples = []
        for i, sentence in enumerate(self.read_split(self.recipe, getattr(self.recipe.data, split))):
            ids, starts = self.encode_words(sentence.words)
            tags = [self.labels.encode(t, sentence.where_word(k)) for k, t in enumerate(sentence.tags)]
            examples.append(Example(i, ids, tags, starts, self.word_ids(sentence.words)))
        return examples

    def line_example(self, index: int, line: str, where: str) -> Example:
        words = line.split()
        ids, starts = self.encode_words(words)
        return Example(index, ids, [0] * len(starts), starts, self.word_ids(words))

    def cut_example(self, example: Example, max_tokens: int) -> Example:
        """The words whose pieces all lie within the first ``max_tokens``: one tag each, so the answer
        tags the line's first words (a word is never tagged from part of its pieces)."""
        ends = example.word_starts[1:] + [len(example.inputs)]
        words = sum(1 for end in ends if end <= max_tokens)  # words are contiguous: a prefix of them
        kept = ends[words - 1] if words else 0
        return Example(example.index, example.inputs[:kept], example.target[:words], example.word_starts[:words],
                       None if example.word_ids is None else example.word_ids[:words])

    def batch_answers(self, logits: torch.Tensor, examples: list[Example], probabilities: bool) -> list[str]:
        """The most probable tag of each word, space-separated."""
        best = logits.argmax(-1).cpu()  # [B,W]
        return [" ".join(self.labels.labels[int(t)] for t in best[row, : len(e.word_starts)])
                for row, e in enumerate(examples)]
