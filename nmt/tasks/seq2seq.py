"""Attention-based translation (Bahdanau, Cho and Bengio 2015) as a task: sequence in, sequence out.

Follow one sentence: the data module gives token ids; ``encode`` embeds and runs the encoder plugin;
the decoder plugin attends over the encoder states at each step; ``generator`` turns its output into
a distribution over the target vocabulary; ``nmt.search`` decodes greedily or with a beam.
"""
from __future__ import annotations

import inspect
import itertools
import math
import time
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, PositiveInt, field_validator
from pydantic_core import PydanticCustomError
from torch import nn

from nmt import metrics, plugin_checks, search
from nmt.contracts import EncoderDecoderBuilder
from nmt.data.batching import BucketedDataModule
from nmt.data.parallel import Pair, PairCollator, PairDataset, PreparedPairDataset
from nmt.data.prepared import MAX_LENGTH, CorpusSpec, PreparedCorpus, ensure_prepared, wait_for_prepared
from nmt.data.text import iter_lines, read_parallel
from nmt.data.tokenizer import PAD_ID
from nmt.errors import RecipeError
from nmt.recipe import AttentionSection, DecoderSection, EncoderSection, Recipe, Section, TokenizerSection, \
    resolve_data_path
from nmt.registry import register
from nmt.runs import fitted_dir, is_rank_zero
from nmt.tasks.base import Task
from nmt.tasks.limits import MAX_BATCH_SENTENCES, MAX_BATCH_TOKENS, MAX_WORKERS, check_encoder_length
from nmt.tasks.tokenizers import load_tokenizers, train_tokenizers


class ParallelFiles(Section):
    src: str
    tgt: str


class Seq2SeqData(Section):
    root: Optional[str] = None  # default: $NMT_DATA, else ../shared/data
    train: Union[ParallelFiles, list[ParallelFiles]]  # several pairs of files are one corpus, in order
    valid: ParallelFiles
    test: dict[str, ParallelFiles] = {}
    tokenizer: TokenizerSection = {"name": "sentencepiece"}
    joint_vocab: bool = True
    # training pairs longer than this (in tokens, either side) are skipped, and with max_ratio those
    # whose longer side has more than max_ratio times the tokens of the shorter
    max_length: int = Field(100, gt=0, le=MAX_LENGTH)
    max_ratio: Optional[float] = Field(None, ge=1, allow_inf_nan=False)
    batch_tokens: int = Field(2000, gt=0, le=MAX_BATCH_TOKENS, strict=True)  # padded tokens per training batch
    max_sentences: Optional[int] = Field(None, gt=0, le=MAX_BATCH_SENTENCES, strict=True)
    valid_batch_tokens: int = Field(4000, gt=0, le=MAX_BATCH_TOKENS, strict=True)
    valid_max_length_ratio: float = Field(1.5, gt=0, le=100, allow_inf_nan=False)  # .inf would crash greedy search
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS, strict=True)  # DataLoader processes, each a copy of the data
    encoding_errors: str = Field("strict", pattern="^(strict|replace)$")
    # static shapes: training batches padded to the next of these lengths (source and target) and to a
    # multiple of 8 rows, so a compiled step (model.compile: static) meets a few shapes, not hundreds
    pad_lengths: Optional[list[PositiveInt]] = None

    @field_validator("pad_lengths")
    @classmethod
    def _increasing(cls, lengths):
        if lengths is not None and (not lengths or any(b <= a for a, b in zip(lengths, lengths[1:]))):
            raise PydanticCustomError("not_increasing", "expected a non-empty list of increasing lengths, e.g. [16, 32, 48, 101]")
        return lengths

    @field_validator("train")
    @classmethod
    def _some_files(cls, train):
        if isinstance(train, list) and not train:
            raise PydanticCustomError("no_files", "expected a pair of files ({src, tgt}) or a list of them")
        return train


class EmbeddingConfig(Section):
    size: int = Field(256, gt=0, le=65536)  # bounded: a typo (1e9) is a recipe error, not an allocation
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tie_target: bool = False  # share the target embedding with the output layer (Press and Wolf 2017)
    share_source: bool = False  # one embedding for both languages (needs data.joint_vocab: true)


class Seq2SeqModel(Section):
    embedding: EmbeddingConfig = EmbeddingConfig()
    encoder: EncoderSection = {"name": "gru"}
    attention: AttentionSection = {"name": "bahdanau"}
    decoder: DecoderSection = {"name": "rnn"}
    # Training runs the decoder step through torch.compile (the decoder must offer compile_step). Off by
    # default: see the README's training-speed table for what it gave on the CPU and what it costs to start.
    # static: one graph per batch shape (CUDA graphs on a GPU), with data.pad_lengths to keep shapes few;
    # loop: the teacher-forced loop compiled a few positions at a time (compile_step(loop=True))
    compile: Union[bool, Literal["static", "loop"]] = False


CORPUS = "corpus"  # the prepared training corpus, in the run directory


# The most parameters a translation model may have (about 4 GiB in float32, 16 with its gradients and
# Adam's two moments): each size key is bounded alone, but their product is what memory pays for.
MAX_PARAMETERS = 2**30


def check_network_size(recipe: Recipe, build) -> None:
    """``build()`` the network on the meta device, where it takes no memory but its constructors check
    their sizes as anywhere, and refuse it past MAX_PARAMETERS. A plugin that cannot be built there (it
    computes with real tensors in its constructor) is built for real instead, unsized."""
    try:
        with torch.device("meta"):
            network = build()
    except RecipeError:
        raise
    except Exception:
        build()
        return
    count = sum(p.numel() for module in network.values() for p in module.parameters())
    if count > MAX_PARAMETERS:
        sizes = ", ".join(f"model.{section}.{key} {recipe.raw['model'][section][key]}"
                          for section, key in (("embedding", "size"), ("encoder", "hidden_size"),
                                               ("decoder", "hidden_size"))
                          if isinstance(recipe.raw.get("model", {}).get(section), dict)
                          and key in recipe.raw["model"][section])
        raise RecipeError(f"{recipe.path}: model", f"{count:,} parameters even with a vocabulary of 8, more than "
                          f"{MAX_PARAMETERS:,}{f' ({sizes})' if sizes else ''}; make the model smaller")


def train_parts(data) -> list[ParallelFiles]:
    return data.train if isinstance(data.train, list) else [data.train]


@register("task", "seq2seq")
class Seq2SeqTask(Task):
    """Attentional encoder-decoder translation: token sequence in, token sequence out."""

    DataConfig = Seq2SeqData
    ModelConfig = Seq2SeqModel
    monitor = "val/bleu"
    monitor_mode = "max"

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        check_encoder_length(recipe, "model.encoder", recipe.data.max_length, "data.max_length, the longest training source")
        if recipe.model.embedding.share_source and not recipe.data.joint_vocab:
            raise RecipeError(f"{recipe.path}: model.embedding.share_source",
                              "needs one vocabulary for both sides (data.joint_vocab: true)")
        if recipe.model.compile:
            decoder = recipe.components["model.decoder"]
            if not callable(getattr(decoder.cls, "compile_step", None)):
                raise RecipeError(f"{recipe.path}: model.compile",
                                  f"decoder '{recipe.model.decoder['name']}' has no compile_step; set model.compile: false")
            mode = recipe.model.compile
            if mode in ("static", "loop") and mode not in inspect.signature(decoder.cls.compile_step).parameters:
                what = "static compiled step" if mode == "static" else "compiled teacher-forced loop"
                raise RecipeError(f"{recipe.path}: model.compile",
                                  f"decoder '{recipe.model.decoder['name']}' has no {what} "
                                  f"(compile_step({mode}=True)); use model.compile: true")
        if recipe.model.compile == "static" and not recipe.data.pad_lengths:
            raise RecipeError(f"{recipe.path}: model.compile",
                              "static compiles one graph per batch shape: set data.pad_lengths too (a few "
                              f"increasing lengths up to {recipe.data.max_length + 1}), or use model.compile: true")
        if recipe.data.pad_lengths and recipe.data.pad_lengths[-1] < recipe.data.max_length + 1:
            raise RecipeError(f"{recipe.path}: data.pad_lengths",
                              f"the last length must hold the longest training target with its BOS: "
                              f"at least max_length + 1 = {recipe.data.max_length + 1}, got {recipe.data.pad_lengths[-1]}")
        try:  # build the network once (tiny vocabulary) so size mismatches surface before any file is written
            check_network_size(recipe, lambda: cls.build_network(recipe, 8, 8))
        except RecipeError as exc:
            where = exc.where if not exc.where or exc.where.startswith(str(recipe.path)) else f"{recipe.path}: {exc.where}"
            raise RecipeError(where, exc.what) from None
        if check_data:
            for split in [*train_parts(recipe.data), recipe.data.valid, *recipe.data.test.values()]:
                resolve_data_path(split.src, recipe.data.root)
                resolve_data_path(split.tgt, recipe.data.root)

    @classmethod
    def prepare_run(cls, recipe: Recipe, run_dir: Path, workers: int | None = None, force: bool = False,
                    announce: bool = False) -> PreparedCorpus:
        """Fit the tokenizer(s) on the training text, streamed (sentencepiece keeps a bounded sample,
        ``input_sentence_size``), then tokenise the corpus into ``RUN/corpus`` unless it is up to date."""
        data, spec = recipe.data, cls.corpus_spec(recipe, run_dir)

        def side(k: int):
            return itertools.chain.from_iterable(iter_lines(part[k], data.encoding_errors) for part in spec.parts)

        started = time.perf_counter()
        train_tokenizers(recipe, run_dir, side(0), side(1), joint=data.joint_vocab)
        return ensure_prepared(spec, run_dir / CORPUS, workers, force=force, announce=announce,
                               seconds={"tokenizer": round(time.perf_counter() - started, 3)})

    @classmethod
    def corpus_spec(cls, recipe: Recipe, run_dir: Path) -> CorpusSpec:
        data, tokenizer = recipe.data, recipe.components["data.tokenizer"]
        parts = [(resolve_data_path(p.src, data.root), resolve_data_path(p.tgt, data.root)) for p in train_parts(data)]
        prefixes = ("joint", "joint") if data.joint_vocab else ("src", "tgt")
        return CorpusSpec(parts, tokenizer.cls, fitted_dir(run_dir), prefixes,
                          max_length=data.max_length, max_ratio=data.max_ratio, encoding_errors=data.encoding_errors,
                          keep_text=getattr(tokenizer.config, "sampling", None) is not None)

    @classmethod
    def from_run(cls, recipe: Recipe, run_dir: Path) -> "Seq2SeqTask":
        src_tok, tgt_tok = load_tokenizers(recipe, run_dir, joint=recipe.data.joint_vocab)
        return cls(recipe, run_dir, src_tok, tgt_tok)

    def __init__(self, recipe: Recipe, run_dir: Path, src_tokenizer, tgt_tokenizer):
        super().__init__(recipe, run_dir)
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer
        self.pad_id, self.bos_id, self.eos_id = tgt_tokenizer.pad_id, tgt_tokenizer.bos_id, tgt_tokenizer.eos_id
        for name, module in self.build_network(recipe, len(src_tokenizer), len(tgt_tokenizer)).items():
            setattr(self, name, module)
        if recipe.model.embedding.tie_target:
            self.output_bias = nn.Parameter(torch.zeros(len(tgt_tokenizer)))
        self._valid_outputs: list[tuple[int, str]] = []
        self._valid_loss = [0.0, 0]

    # --- the model ------------------------------------------------------------------------

    @staticmethod
    def build_network(recipe: Recipe, src_vocab: int, tgt_vocab: int) -> dict[str, nn.Module]:
        """The modules of the network, from the recipe's plugin sections and the vocabulary sizes."""
        emb, pad_id = recipe.model.embedding, PAD_ID
        builder = EncoderDecoderBuilder.from_recipe(recipe)
        encoder = builder.build_encoder(input_size=emb.size)
        tgt_embed = nn.Embedding(tgt_vocab, emb.size, padding_idx=pad_id)
        modules = {  # with share_source one module under both names: parameters() and the optimiser see it once
            "src_embed": tgt_embed if emb.share_source else nn.Embedding(src_vocab, emb.size, padding_idx=pad_id),
            "tgt_embed": tgt_embed,
            "embed_dropout": nn.Dropout(emb.dropout),
            "encoder": encoder,
            "decoder": builder.build_decoder(input_size=emb.size, encoder=encoder),
        }
        if emb.tie_target:  # project to the embedding size, then score with the embedding matrix
            modules["pre_output"] = nn.Linear(modules["decoder"].output_size, emb.size, bias=False)
        else:
            modules["output"] = nn.Linear(modules["decoder"].output_size, tgt_vocab)
        return modules

    def generator(self, outputs: torch.Tensor) -> torch.Tensor:
        """Decoder outputs [..., H] to logits [..., V]."""
        if self.recipe.model.embedding.tie_target:
            return F.linear(self.pre_output(outputs), self.tgt_embed.weight, self.output_bias)
        return self.output(outputs)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        """Source ids [B,S] to (memory for attention, initial decoder state)."""
        embedded = self.embed_dropout(self.src_embed(src))  # [B,S,E]
        encoded = self.encoder(embedded, src_len)  # states [B,S,D], mask [B,S], pooled [B,D]
        plugin_checks.check_encoded(self.encoder, encoded, embedded)  # a plugin's mistake named here, not downstream
        return self.decoder.prepare_memory(encoded), self.decoder.init_state(encoded)

    @property
    def max_length(self) -> int:
        """The longest training sentence allowed (``data.max_length``, tokens): nmt translate warns past it,
        as it does for an ensemble or an ONNX engine, which have the same attribute."""
        return self.recipe.data.max_length

    def decode_step(self, prev: torch.Tensor, state, memory):
        """One target step: previous ids [B] to log-probabilities [B,V] and the next state."""
        log_probs, state, _ = self.decode_step_with_attention(prev, state, memory)
        return log_probs, state

    def decode_step_with_attention(self, prev: torch.Tensor, state, memory):
        """:meth:`decode_step` that also returns the attention weights [B,S] the step used (the decoder
        computes them anyway, so asking costs nothing); for heatmaps and alignments."""
        input_emb = self.tgt_embed(prev)  # [B,E]

        def step():
            return self.decoder.step(input_emb, state, memory)
        try:
            result = step()
        except Exception:
            plugin_checks.blame_attention(self.decoder, step)  # an attention's bad output, named; else as it was
            raise
        output, state, weights = plugin_checks.check_step(self.decoder, result, input_emb, step)  # [B,H], state, [B,S]
        return F.log_softmax(self.generator(output).float(), dim=-1), state, weights

    def select_state(self, state, index: torch.Tensor):
        return plugin_checks.check_state(self.decoder, self.decoder.select_state(state, index), "select_state")

    def select_memory(self, memory, index: torch.Tensor):
        return self.decoder.select_memory(memory, index)

    def forward(self, src, src_len, tgt_in) -> torch.Tensor:
        """Teacher-forced logits [B,T,V] for target inputs [B,T]."""
        memory, state = self.encode(src, src_len)
        outputs, _, _ = self.teacher_forced(self.embed_dropout(self.tgt_embed(tgt_in)), state, memory, src.size(1))
        return self.generator(outputs)  # [B,T,H] -> [B,T,V]

    def teacher_forced(self, inputs: torch.Tensor, state, memory, source_length: int):
        """The decoder over target inputs [B,T,E]: (outputs [B,T,H], state, attention [B,T,S]), checked
        against its contract (:mod:`nmt.plugin_checks`)."""
        def run():
            return self.decoder(inputs, state, memory)
        try:
            result = run()
        except Exception:
            plugin_checks.blame_attention(self.decoder, run)
            raise
        return plugin_checks.check_teacher_forced(self.decoder, result, inputs, source_length, run)

    def loss(self, batch, label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the real target tokens, and their number."""
        logits, real = self._real_logits(batch)  # [N,V], [B,T]
        total = F.cross_entropy(logits.float(), batch["tgt_out"][real], label_smoothing=label_smoothing,
                                reduction="sum")
        return total, int(real.sum())

    def target_log_probs(self, batch) -> torch.Tensor:
        """Forced decoding: the log-probability [B,T] of each target output token (EOS included) given
        the source and the target before it; 0 at padding. Their sum over a corpus is minus ``loss``."""
        logits, real = self._real_logits(batch)  # [N,V], [B,T]
        picked = -F.cross_entropy(logits.float(), batch["tgt_out"][real], reduction="none")  # [N]
        return torch.zeros(real.shape, device=picked.device).masked_scatter(real, picked)  # [B,T]

    def _real_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits [N,V] of the N real (not padding) target positions, and where they are [B,T]."""
        memory, state = self.encode(batch["src"], batch["src_len"])
        outputs, _, _ = self.teacher_forced(self.embed_dropout(self.tgt_embed(batch["tgt_in"])), state, memory,
                                            batch["src"].size(1))  # [B,T,H]
        real = batch["tgt_out"] != self.pad_id  # [B,T]; the output layer is the costliest step: skip padding
        return self.generator(outputs[real]), real  # [N,V], [B,T]

    # --- Lightning hooks ------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        mode = self.recipe.model.compile
        if stage == "fit" and mode:
            self.decoder.compile_step(**({mode: True} if mode in ("static", "loop") else {}))

    def training_step(self, batch, batch_idx):
        total, ntokens = self.loss(batch, self.recipe.spec.optim.label_smoothing)
        loss = self.check_finite(total / ntokens)
        self.log("train/loss", loss, prog_bar=True, batch_size=ntokens)
        return loss

    def validation_step(self, batch, batch_idx):
        total, ntokens = self.loss(batch)
        self._valid_loss[0] += plugin_checks.check_validation_loss(self, total.item())
        self._valid_loss[1] += ntokens
        hyps = search.greedy_search(self, batch["src"], batch["src_len"], self.recipe.data.valid_max_length_ratio)
        for index, hyp in zip(batch["ids"].tolist(), hyps):
            text = self.tgt_tokenizer.decode(hyp.tokens)
            plugin_checks.check_text(self.tgt_tokenizer, text, f"validation line {index + 1}", one_line=False)
            self._valid_outputs.append((index, text))

    def on_validation_epoch_end(self):
        outputs, (loss_sum, ntokens) = self._valid_outputs, self._valid_loss
        self._valid_outputs, self._valid_loss = [], [0.0, 0]
        if dist.is_available() and dist.is_initialized():  # score the whole dev set, not this rank's share
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (outputs, loss_sum, ntokens))
            outputs = [o for part in gathered for o in part[0]]
            loss_sum, ntokens = sum(p[1] for p in gathered), sum(p[2] for p in gathered)
        outputs.sort()
        references = self.trainer.datamodule.valid_references
        hypotheses = [h for _, h in outputs]
        refs = [references[i] for i, _ in outputs]
        scores = metrics.score(hypotheses, [refs], ("bleu", "chrf"))
        loss = loss_sum / max(ntokens, 1)
        values = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50)), "val/bleu": scores["bleu"].score,
                  "val/chrf": scores["chrf"].score, "val/sentences": float(len(outputs))}
        self.log_dict(values, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.step_plateau(values[self.monitor])

    def make_datamodule(self) -> BucketedDataModule:
        data = self.recipe.data
        paths = resolve_data_path(data.valid.src, data.root), resolve_data_path(data.valid.tgt, data.root)
        valid_src, valid_tgt = read_parallel(*paths, encoding_errors=data.encoding_errors)
        locations = [(f"{paths[0]}:{n}", f"{paths[1]}:{n}") for n in range(1, len(valid_src) + 1)]
        module = BucketedDataModule(
            self.training_set(), PairDataset(self.tokenize_pairs(valid_src, valid_tgt, locations)),
            PairCollator(self.pad_id, self.bos_id, self.eos_id, data.pad_lengths),
            batch_tokens=data.batch_tokens, max_sentences=data.max_sentences,
            valid_batch_tokens=data.valid_batch_tokens, seed=self.recipe.spec.seed, num_workers=data.num_workers,
            valid_collator=PairCollator(self.pad_id, self.bos_id, self.eos_id))
        module.valid_references = valid_tgt
        return module

    def training_set(self) -> PreparedPairDataset:
        """The training pairs from the run's prepared corpus (prepared first by rank 0 if missing or
        stale); with ``data.tokenizer.sampling`` each draw of a pair samples a new segmentation of both
        sides (validation and translation never sample)."""
        spec = self.corpus_spec(self.recipe, self.run_dir)
        corpus = (ensure_prepared(spec, self.run_dir / CORPUS) if is_rank_zero()
                  else wait_for_prepared(spec, self.run_dir / CORPUS))
        config, seed = self.recipe.components["data.tokenizer"].config, self.recipe.spec.seed
        encode_src = self.src_tokenizer.sampling_encoder(config, seed)
        encode_tgt = self.tgt_tokenizer.sampling_encoder(config, seed)
        return PreparedPairDataset(corpus, encode_src, encode_tgt, max_length=self.recipe.data.max_length)

    def tokenize_pairs(self, src: list[str], tgt: list[str], locations: Sequence[tuple[str, str]] = ()) -> list[Pair]:
        """Token ids for every pair, none skipped (validation, scoring), checked at their ``locations``
        (by default "source line N", "target line N"); training filters at preparation (:mod:`nmt.data.prepared`)."""
        locations = locations or [(f"source line {n}", f"target line {n}") for n in range(1, len(src) + 1)]
        sources = plugin_checks.encode_all(self.src_tokenizer, src, [where for where, _ in locations])
        targets = plugin_checks.encode_all(self.tgt_tokenizer, tgt, [where for _, where in locations])
        return [Pair(i, s, t) for i, (s, t) in enumerate(zip(sources, targets))]
