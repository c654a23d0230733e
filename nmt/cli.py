"""The ``nmt`` command line (click). Commands import their heavy parts lazily so ``--help`` is fast.

User errors print one line, ``nmt: <where>: <what>``, and exit 2; runtime failures exit 1;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import click

import nmt
from nmt.cli_report import caller_outside_nmt, failure, say, thread_failure
from nmt.errors import UserError
from nmt.io import SPACE_ERRNOS, Terminated, describe
from nmt.metrics import MAX_LINE_BYTES
from nmt.options import (CHECKPOINT_HELP, ENCODING_ERRORS, MAX_ALPHA, MAX_BEAM, MAX_INPUT_TOKENS, MAX_LENGTH_RATIO,
                         MAX_PREPARE_WORKERS, Bounded, dash_is_standard, dash_is_stdin_file, forced_decoding_options)

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(nmt.__version__, prog_name="nmt")
@click.option("--plugin", "plugins", multiple=True, metavar="PATH_OR_MODULE",
              help="Load local plugin code (a .py file, package directory or module). Repeatable.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(plugins: tuple[str, ...], debug: bool) -> None:
    """nmt: RNN sequence-to-sequence models (translation, sequence prediction, regression)
    trained from one YAML recipe with PyTorch Lightning."""
    from nmt import registry

    for spec in plugins:
        registry.load_plugin(spec, base=Path.cwd())


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where checkpoints, logs and the tokenizer go [default: runs/<recipe name>]. "
                   "An existing run directory is resumed, never overwritten.")
@click.option("--fresh", is_flag=True, help="Refuse to resume: fail if the run directory already holds a run.")
@click.option("--init-from", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR",
              help="Start a new run from this trained run's best weights and tokenizer (fine-tuning on new "
                   "data); the model and tokenizer sections must match it. A resumed run ignores it.")
def train(recipe: Path, overrides: tuple[str, ...], run_dir: Path | None, fresh: bool, init_from: Path | None) -> None:
    """Train a model from RECIPE, with optional dotted OVERRIDES such as trainer.max_epochs=3.

    The recipe's trainer: section is passed to PyTorch Lightning's Trainer."""
    from nmt.recipe import load_recipe
    from nmt.train import train_recipe

    loaded = load_recipe(recipe, list(overrides))
    train_recipe(loaded, run_dir or Path("runs") / loaded.name, fresh=fresh, init_from=init_from)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The run directory nmt train will use [default: runs/<recipe name>].")
@click.option("--workers", default=None,
              type=Bounded(int, 1, MAX_PREPARE_WORKERS, f" (two per CPU core: {os.cpu_count() or 1} here)"),
              help=f"Tokenising processes, at most {MAX_PREPARE_WORKERS} (two per CPU core), and no more than the "
                   "corpus has chunks of 4 MiB [default: one per CPU core available].")
@click.option("--force", is_flag=True, help="Prepare the corpus again even if it is up to date.")
def prepare(recipe: Path, overrides: tuple[str, ...], run_dir: Path | None, workers: int | None, force: bool) -> None:
    """Fit the tokenizer and tokenise RECIPE's training corpus into memory-mapped shards.

    nmt train does the same when the prepared corpus (RUN/corpus) is missing or stale (another
    training file, tokenizer or filter); run it first to size a large corpus, or on a machine
    with more cores than the training one."""
    from nmt.recipe import load_recipe
    from nmt.train import prepare_recipe

    loaded = load_recipe(recipe, list(overrides))
    prepare_recipe(loaded, run_dir or Path("runs") / loaded.name, workers=workers, force=force)


@cli.command()
@click.option("--run", "run_dirs", required=True, multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A run directory written by nmt train. Repeat it to translate with an ensemble: the runs' "
                   "probabilities are averaged at every step; they must share one tokenizer.")
@click.option("--checkpoint", default="best", show_default=True,
              help="best, last, averaged (written by nmt average) or a checkpoint path; with several "
                   "runs, best, last and averaged name each run's own.")
@click.option("--beam", default=5, show_default=True, type=Bounded(int, 1, MAX_BEAM),
              help=f"Beam size (at most {MAX_BEAM}); 1 is greedy.")
@click.option("--nbest", default=1, show_default=True, type=Bounded(int, 1, MAX_BEAM),
              help="Print the K best hypotheses per line as 'i ||| hypothesis ||| score' (K <= --beam).")
@click.option("--alpha", default=0.6, show_default=True, type=Bounded(float, 0.0, MAX_ALPHA),
              help="Length penalty exponent (GNMT); 0 ranks by raw log-probability.")
@click.option("--batch-size", default=4000, show_default=True, type=Bounded(int, 1, 10_000_000),
              help="Source tokens per batch at beam sizes up to 5; wider beams take proportionally fewer "
                   "sentences, since the search holds a copy of each sentence per beam.")
@click.option("--max-length-ratio", default=2.0, show_default=True, type=Bounded(float, 0.1, MAX_LENGTH_RATIO),
              help="Longest output, as a multiple of the source length (plus 10).")
@click.option("--max-input-tokens", type=Bounded(int, 1, MAX_INPUT_TOKENS),
              help="Longer input lines are cut to this many tokens, with a warning "
                   "[default: 4 x the recipe's data.max_length].")
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_standard, help="Input file (plain or .gz) [default: stdin; also -].")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_standard, help="Output file, written atomically [default: stdout; also -].")
@click.option("--encoding-errors", default="strict", show_default=True, type=ENCODING_ERRORS,
              help="What to do with bytes that are not UTF-8.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--plot-attention", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write a heatmap of the best hypothesis's attention weights for each non-empty input line "
                   "to DIR/000001.png, DIR/000002.png ... (line numbers; source pieces across, target pieces down).")
@click.option("--alignments", is_flag=True,
              help="Append ' ||| ' and the hard alignment to each output line: 'i-j' pairs, source piece i "
                   "(0-based) most attended when target piece j was written (fast_align's Pharaoh format).")
@click.option("--engine", default="torch", show_default=True, type=click.Choice(["torch", "onnx"]),
              help="onnx: search on onnxruntime and numpy with the run's ONNX export (nmt export), without torch.")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="The ONNX export for --engine onnx [default: RUN/onnx].")
@click.option("--compile", "compile_step", is_flag=True,
              help="Run the decoder step through torch.compile (as model.compile: true trains). It compiles at "
                   "the first batch (seconds to a minute), then searches faster: for large inputs and GPUs.")
def translate(run_dirs, checkpoint, beam, nbest, alpha, batch_size, max_length_ratio, max_input_tokens, input_path,
              output_path, encoding_errors, device, plot_attention, alignments, engine, onnx_dir, compile_step) -> None:
    """Translate text line by line with batched beam search (stdin to stdout by default).

    Output line i answers input line i; empty input lines give empty output lines. Several --run
    options decode with an ensemble of those runs (one search, their probabilities averaged)."""
    from nmt.translate import translate_file

    translate_file(list(run_dirs), checkpoint=checkpoint, beam=beam, nbest=nbest, alpha=alpha,
                   batch_tokens=batch_size, max_length_ratio=max_length_ratio, input_path=input_path,
                   output_path=output_path, encoding_errors=encoding_errors, device=device,
                   max_input_tokens=max_input_tokens, plot_attention=plot_attention, alignments=alignments,
                   engine=engine, onnx_dir=onnx_dir, compile_step=compile_step)


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A translation run directory written by nmt train.")
@click.option("--src", "src_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_stdin_file,
              help="Source sentences, one per line (plain or .gz; - reads stdin).")
@click.option("--tgt", "tgt_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_stdin_file,
              help="Their translations to score, line for line with --src (- reads stdin).")
@click.option("--checkpoint", default="best", show_default=True, help=CHECKPOINT_HELP)
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line: {"line", "logprob", "tokens", "token_logprobs", "ppl"}.')
@forced_decoding_options
def score(run_dir, src_path, tgt_path, checkpoint, as_json, output_path, batch_size, max_input_tokens, encoding_errors,
          device) -> None:
    """Forced decoding: how probable the run finds each --tgt line as the translation of its --src line.

    Prints one total log-probability (natural log, EOS included) per line, or a JSON object per line
    with --json; one "corpus:" line on stderr gives the NLL per target token and the perplexity, computed
    as training's val/loss and val/ppl are."""
    from nmt.score import score_files

    score_files(run_dir, src_path, tgt_path, checkpoint=checkpoint, as_json=as_json, output_path=output_path,
                batch_tokens=batch_size, encoding_errors=encoding_errors, device=device,
                max_input_tokens=max_input_tokens)


@cli.command()
@click.option("--nbest", "nbest_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_stdin_file,
              help="The n-best list of nmt translate --nbest K: 'i ||| hypothesis ||| score' lines (- reads stdin).")
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_stdin_file,
              help="The source lines the list translates (plain or .gz; - reads stdin).")
@click.option("--run", "run_dirs", required=True, multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A forward run (source to target); repeat it for an ensemble, as in nmt translate.")
@click.option("--channel", "channel_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A channel run trained the other way (target to source), scoring log P(source | hypothesis); "
                   "repeat it for several.")
@click.option("--checkpoint", default="best", show_default=True,
              help="The forward runs' checkpoint: " + CHECKPOINT_HELP)
@click.option("--channel-checkpoint", default="best", show_default=True,
              help="The channel runs' checkpoint: " + CHECKPOINT_HELP)
@click.option("--weight", help="The channel's weight [default: 0.5 with --channel, else 0]; with --ref, "
                                "comma-separated weights to try, e.g. 0,0.25,0.5,1.")
@click.option("--alpha", default="0.6", show_default=True,
              help="Length penalty exponent (GNMT) over the whole score; with --ref, comma-separated values to try.")
@click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path),
              help="References of a dev set: try every --weight and --alpha, print their BLEU, write the best.")
@forced_decoding_options
def rerank(nbest_path, input_path, run_dirs, channel_dirs, checkpoint, channel_checkpoint, weight, alpha, ref_path,
           output_path, batch_size, max_input_tokens, encoding_errors, device) -> None:
    """Pick each line's translation from an n-best list, scored again by the forward runs and by channel
    runs of the other direction: log P(y|x) / lp(|y|, alpha) + weight * log P(x|y) / |x|.

    With --ref (a dev set), every weight and alpha listed is tried and the best written; pass the
    chosen values to rerank the test sets. Output line i answers input line i."""
    from nmt.rerank import parse_grid, rerank_file

    weight = weight or ("0.5" if channel_dirs else "0")
    rerank_file(nbest_path, input_path, list(run_dirs), list(channel_dirs), checkpoint=checkpoint,
                channel_checkpoint=channel_checkpoint, weights=parse_grid("--weight", weight, 0.0, 100.0),
                alphas=parse_grid("--alpha", alpha, 0.0, MAX_ALPHA), ref_path=ref_path, output_path=output_path,
                batch_tokens=batch_size, encoding_errors=encoding_errors, device=device,
                max_input_tokens=max_input_tokens)


@cli.command()
@click.option("--hyp", "hyps", required=True, multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_stdin_file,
              help="Hypotheses, one per line (- reads stdin). Repeat it to compare systems: the first is the baseline.")
@click.option("--ref", "refs", required=True, multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_stdin_file,
              help="References, one per line (repeat for several references; - reads stdin).")
@click.option("--metrics", default="bleu,chrf,ter", show_default=True, help="Comma-separated: bleu, chrf, ter.")
@click.option("--paired", type=click.Choice(["bs", "ar"]),
              help="With several --hyp: sacrebleu's paired significance test against the first, bootstrap "
                   "resampling (bs) or approximate randomization (ar) [default: bs].")
@click.option("--samples", type=Bounded(int, 1, 1_000_000),
              help="Resamples of --paired [default: sacrebleu's, 1000 for bs, 10000 for ar].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--max-line-bytes", type=Bounded(int, 1, 1 << 30), default=MAX_LINE_BYTES, show_default=True,
              help="A longer line in a --hyp or --ref file is an error naming its file and line.")
def evaluate(hyps: tuple[Path, ...], refs: tuple[Path, ...], metrics: str, paired: str | None, samples: int | None,
             as_json: bool, max_line_bytes: int) -> None:
    """Score detokenised hypotheses against references with sacrebleu, printing each signature.

    With several --hyp, each system is compared with the first by a paired test (p-values, and with
    bootstrap resampling each score's 95% confidence interval)."""
    from nmt.metrics import compare_files, evaluate_files

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise UserError("--metrics", f"expected one or more of bleu, chrf, ter (comma-separated), got {metrics!r}")
    if len(hyps) > 1 or paired:
        compare_files(list(hyps), list(refs), names, paired or "bs", samples or 0, as_json=as_json,
                      max_line_bytes=max_line_bytes)
    elif samples:
        raise UserError("--samples", "counts the resamples of a paired test: give two or more --hyp")
    else:
        evaluate_files(hyps[0], list(refs), names, as_json=as_json, max_line_bytes=max_line_bytes)


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A classification, tagging, regression, forecasting or generation run written by nmt train.")
@click.option("--checkpoint", default="best", show_default=True, help=CHECKPOINT_HELP)
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_standard, help="Text lines, sentences or a series CSV, by task [default: stdin; also -].")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              callback=dash_is_standard, help="Output file, written atomically [default: stdout; also -].")
@click.option("--probabilities", is_flag=True, help="Classification: print the probability of each label.")
@click.option("--max-input-tokens", type=Bounded(int, 1, MAX_INPUT_TOKENS),
              help="Text lines: longer lines are cut to this many tokens (steps of a numeric line), with a "
                   "warning; tagging tags the words within them [default: 4 x the recipe's data.max_length].")
@click.option("--encoding-errors", default="strict", show_default=True, type=ENCODING_ERRORS,
              help="What to do with bytes that are not UTF-8.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def predict(run_dir, checkpoint, input_path, output_path, probabilities, max_input_tokens, encoding_errors,
            device) -> None:
    """Predict with a non-translation run: labels for text lines, tags for sentences, forecasts for a series."""
    from nmt.io import refuse_same_file
    from nmt.runs import load_run, refuse_run_files
    from nmt.translate import standard_input

    if input_path is None:
        standard_input()  # closed (nmt predict <&-): one line now, not an AttributeError after loading
    refuse_same_file(output_path, input_path, stdin=input_path is None)
    refuse_run_files(output_path, [run_dir], checkpoint)
    task = load_run(run_dir, checkpoint=checkpoint, device=device)
    if probabilities and not task.label_probabilities:  # it was ignored: the user got no probabilities, no word
        raise UserError("--probabilities", f"gives each label's probability for classification runs; "
                                           f"{run_dir} is a '{task.recipe.spec.task}' run")
    task.predict_file(input_path, output_path, probabilities=probabilities, encoding_errors=encoding_errors,
                      max_input_tokens=max_input_tokens)  # a series task takes any options and has no such cap


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A translation run directory written by nmt train.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves every network interface.")
@click.option("--port", default=8000, show_default=True, type=Bounded(int, 0, 65535), help="Port (0: any free one).")
@click.option("--checkpoint", default="best", show_default=True, help=CHECKPOINT_HELP)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=4000, show_default=True, type=Bounded(int, 1, 10_000_000),
              help="Source tokens per model batch: concurrent requests are joined up to this many.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=Bounded(float, 0.0, 1000.0),
              help="How long a request waits for others to join its batch.")
@click.option("--compile", "compile_step", is_flag=True,
              help="Run the decoder step through torch.compile, compiled before the server answers (seconds to "
                   "a minute); then each search is faster.")
def serve(run_dir, host, port, checkpoint, device, batch_size, batch_wait_ms, compile_step) -> None:
    """Serve a translation run over HTTP until Ctrl-C or SIGTERM.

    \b
    POST /translate  {"sentences": [...], "beam": 5, "nbest": 1, "alpha": 0.6, ...}: the same
                     options and bounds as nmt translate; "attention": true adds each hypothesis's
                     attention weights and the source and target pieces they cover
    GET  /health     run name, device, whether the step is compiled, batch counters
    GET  /           a page to try sentences in a browser"""
    from nmt.serve import serve_run

    serve_run(run_dir, host=host, port=port, checkpoint=checkpoint, device=device, batch_tokens=batch_size,
              wait_s=batch_wait_ms / 1000, compile_step=compile_step)


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A translation run directory written by nmt train.")
@click.option("--format", "export_format", default="onnx", show_default=True, type=click.Choice(["onnx"]),
              help="The export's format: ONNX graphs of the encoder and the decoder step, for onnxruntime.")
@click.option("--checkpoint", default="best", show_default=True, help=CHECKPOINT_HELP)
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the export goes; an earlier export there is replaced [default: RUN/onnx].")
def export(run_dir: Path, export_format: str, checkpoint: str, output_dir: Path | None) -> None:
    """Export a translation run to run without torch: the encoder and one decoder step as ONNX graphs
    (dynamic batch and length), the tokenizer files and engine.json; nmt translate --engine onnx uses it."""
    from nmt.onnx_export import export_onnx

    written = export_onnx(run_dir, output_dir, checkpoint)
    click.echo(f"nmt: exported {run_dir} to {written}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("metrics", nargs=-1)
def plot(run_dir: Path, metrics: tuple[str, ...]) -> None:
    """Learning curves of a run: RUN_DIR/<metric>.png against steps and wall time, and the points.

    METRICS default to every metric the run logged (e.g. val/bleu train/loss lr-Adam)."""
    from nmt.plots import plot_run

    plot_run(run_dir, metrics)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--last", type=Bounded(int, 1, 100), metavar="N",
              help="Average the N latest kept validations (checkpoints/step-<step>.ckpt).")
@click.option("--best", type=Bounded(int, 1, 100), metavar="N",
              help="Average the N best kept checkpoints by the monitored score (checkpoints/best-<step>.ckpt).")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The averaged checkpoint, written atomically [default: RUN_DIR/checkpoints/averaged.ckpt].")
def average(run_dir: Path, last: int | None, best: int | None, output_path: Path | None) -> None:
    """Average the weights of a run's kept checkpoints into one for nmt translate --checkpoint.

    A run keeps them when its recipe sets checkpoint.keep: N (N > 1)."""
    from nmt.average import average_run

    if (last is None) == (best is None):
        raise UserError("nmt average", "give one of --last N or --best N")
    average_run(run_dir, "last" if last is not None else "best", last or best, output_path)


@cli.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
def plugins(names: tuple[str, ...]) -> None:
    """List every registered plugin: kind, name, origin and a one-line description.

    With NAMEs, the recipe keys each plugin of that name takes (a task's data.* and model.*, a component's
    options): what each takes, its default and what its source says of it."""
    from nmt import registry

    if names:
        from nmt.recipe_keys import print_plugin_keys

        print_plugin_keys(registry.entries(), names)
        return
    rows = [(e.kind, e.name, e.origin, e.description) for e in registry.entries()]
    rows += [("broken", b.name, b.origin, f"entry point failed to load: {b.problem}")
             for b in registry.broken_entry_points()]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("KIND", "NAME", "ORIGIN"))]
    click.echo(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'ORIGIN':<{widths[2]}}  DESCRIPTION")
    for kind, name, origin, description in rows:
        click.echo(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {origin:<{widths[2]}}  {description}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("what", type=click.Choice(["translate-speed", "streaming-memory", "train-speed", "tbptt-memory",
                                           "serve-load", "data-scale"]),
                default="translate-speed")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The run to measure (translate-speed, streaming-memory, serve-load).")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N (translate-speed, streaming-memory, serve-load, train-speed).")
def bench(what: str, args: tuple[str, ...], run_dir: Path | None, device: str) -> None:
    """Measure speed or memory, printing ratios of variants measured side by side in one run.

    Each runs a script of benchmarks/ with ARGS; `nmt bench WHAT -- --help` lists all of its options.

    \b
    translate-speed   batched beam search vs one sentence at a time, and greedy (--run; ARGS: [--sentences 300]
                      [--beam 5])
    streaming-memory  peak memory of nmt translate on 10k and 100k lines (--run)
    train-speed       training tokens/s of a recipe: bucketed, bf16, unbucketed, the decoder's other ways and,
                      for translation, operations per target position; classify, tag: one pass, adversarial
                      (ARGS: recipe.yaml [--steps N] [--warmup N] [--compile] [--batch-tokens N ...]
                      [--static L ...] [--profile VARIANT ...]; --compile: the compiled step and the compiled
                      loop, model.compile true and loop)
    tbptt-memory      peak memory of truncated vs full BPTT as sequences grow (ARGS: [--lengths A B])
    serve-load        nmt serve on loopback under concurrent clients: throughput, p50/p99 latency (--run;
                      ARGS: [--requests 500] [--clients 32] [--beam 5] [--compile] [--timeout 300])
    data-scale        nmt prepare and nmt train on generated corpora of 1M and 10M pairs: preparation speed,
                      peak memory, training tokens/s (ARGS: [--sizes 1000000 10000000] [--steps 60]
                      [--workdir DIR] [--workers 2] [--log-every 10] [--seed 0])"""
    from nmt.bench import run_benchmark

    run_benchmark(what, run_dir=run_dir, device=device, args=args)


@cli.result_callback()
def _no_result(result, **_) -> None:
    """A command's return value is never an exit code (see :func:`main`)."""
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning errors into one line and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        threading.excepthook = thread_failure
    try:
        # Outside standalone mode Click returns the code of an Exit (ctx.exit(N), --help, --version, a
        # failed nmt bench script) instead of raising it; the commands' own results are dropped
        # (_no_result), so a number here is always an exit code.
        code = cli.main(args=argv, prog_name="nmt", standalone_mode=False)
        return code if isinstance(code, int) and not isinstance(code, bool) else 0
    except click.exceptions.Exit as exc:  # not raised by Click 8's main, which returns the code
        return exc.exit_code
    except click.ClickException as exc:
        say(f"nmt: {exc.format_message()}")
        return exc.exit_code
    except click.exceptions.Abort:
        say("nmt: aborted")
        return 130
    except UserError as exc:
        if debug:
            raise
        if not exc.quiet:
            say(f"nmt: {exc.message}")
        return exc.exit_code
    except KeyboardInterrupt:
        say("nmt: interrupted")
        return 130
    except Terminated as exc:  # SIGTERM while an output was written: its temporary file is gone
        say("nmt: terminated (SIGTERM); the output was not written, an older one is unchanged")
        return exc.code
    except SystemExit as exc:  # nmt never calls sys.exit inside a command: plugin code, or a library, did
        caller = caller_outside_nmt(exc)
        if debug or caller is None:  # a library's own exit (Click's on a closed pipe: nmt plugins | head)
            raise
        say(f"nmt: error: sys.exit({exc.code!r}) at {caller} ended the command before it finished (run with "
            "--debug for the traceback)")
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if debug or exc.errno not in SPACE_ERRNOS:
            return failure(exc, debug)
        # A full disk is the user's to fix, and nothing written before is lost: outputs and checkpoints
        # are replaced by a rename only once complete (a training resumes from its last.ckpt).
        say(f"nmt: {exc.filename or 'disk'}: cannot write ({describe(exc)}); make room and run the command again")
        return 2
    except Exception as exc:
        return failure(exc, debug)


if __name__ == "__main__":
    sys.exit(main())
