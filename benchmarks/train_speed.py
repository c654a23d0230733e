"""Training speed of a recipe, variants measured side by side on the same batches.

    python benchmarks/train_speed.py recipes/translation/multi30k/en-de.yaml [--steps 20] [--device cpu]
        [--compile] [--batch-tokens N ...] [--static L ...] [--profile VARIANT ...]

Prints tokens per second of full training steps (forward, backward, clipping, Adam) and each
variant's ratio to the first. The variants alternate step by step, so machine load hits all alike.
A translation recipe (target tokens):
  nmt          token-count batches bucketed by length, output layer on real tokens only (the default)
  bf16         the same under bfloat16 autocast (what trainer.precision=bf16-mixed does)
  unbucketed   the same sentences in random order with the same sentences per batch (more padding)
  stepwise, hoisted, shared (and bf16-)   teacher forcing the other ways than this device's default
               (RNNDecoder.TEACHER_FORCING: shared on the CPU, stepwise on CUDA; the default's rows are
               nmt and bf16): stepwise, step() at every position; hoisted, the written cell with the
               first layer's input products of all positions computed at once; shared, hoisted and
               every other weight's gradient computed once for all positions (SharedLinear)
  bf16-f32cell, bf16-bf16cell, bf16-writtencell   bf16 stepwise with the decoder's recurrent cell run
               another way than this device's default (RNNDecoder.AUTOCAST_CELL: autocast on the CPU,
               float32 on CUDA): the module in float32 with autocast off, the module under autocast (cell
               and state bf16), the cell written out (products bf16, gates and state float32); the
               default cell's row is bf16 (bf16-stepwise where hoisted is the default)
  compiled, bf16+compiled   with --compile: the decoder step through torch.compile (model.compile);
               its compilation falls in the warm-up steps, which are not timed
  loop, bf16+loop   with --compile: the teacher-forced loop compiled a few positions at a time
               (model.compile: loop); each chunk length is compiled before the timed steps
  static, bf16+static   with --static L [L ...]: the same batches padded to those lengths and a multiple
               of 8 rows (data.pad_lengths), the step compiled once per shape (model.compile: static;
               CUDA graphs on CUDA); every shape is compiled before the timed steps
  nmt@N, bf16@N  with --batch-tokens N [N ...]: batches of N tokens instead of the recipe's
               data.batch_tokens. A step bound by kernel launches costs about the same at any
               batch size, so its tokens/s grows with N; a step bound by arithmetic does not.
Each eager variant of a translation recipe also prints its operations per target position: the aten
operations that compute (views and bare allocations left out) in a training step's forward and
backward for each position of the target, counted, not timed (ops_per_position). On a GPU each
launches at least one kernel (a cuDNN RNN call counts once and launches several), so the count is
what a launch-bound step costs per position; it is the same on every run and machine.
--profile VARIANT ...: after the timed steps (before the operations are counted, so a deadline that
cuts the run cuts the counts first), a few more steps of each named variant under torch.profiler:
the wall time a step; on CUDA the kernels launched a step and the time the device was busy (a step
whose device is busy for a small part of its wall is bound by launches and the Python loop, not by
arithmetic) and the kernels that took it (a bf16 step's casts show here); the aten operations by
self CPU time.
A classification or tagging recipe (input tokens):
  nmt          one pass per step (model.embedding.adversarial=0)
  adversarial  adversarial training at distance 1.0: a second pass at the moved inputs
"""
from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nmt.bench import ScriptArguments, bounded, script_main
from nmt.errors import DataError, UserError

MAX_STEPS = 100_000  # timed steps (and warm-up steps) per variant
MAX_BATCH_TOKENS = 10_000_000  # nmt translate's --batch-size bound
MAX_PAD_LENGTH = 100_000  # nmt translate's --max-input-tokens bound


def build(recipe_path: str, device: str):
    from nmt import runs
    from nmt.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    run_dir = Path(tempfile.mkdtemp(prefix="nmt-bench-"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)  # the tokenizer and prepared corpus: scratch
    runs.write_run(run_dir, recipe.raw)
    recipe.task_cls.prepare_run(recipe, run_dir)
    task = recipe.task_cls.from_run(recipe, run_dir).to(device).train()
    return recipe, task


def make_batches(task, n: int, seed: int = 0, batch_tokens: int | None = None, pad_lengths: list[int] | None = None):
    """n bucketed batches as training sees them, and the same sentences in unbucketed batches;
    ``batch_tokens`` and ``pad_lengths`` instead of the recipe's data.batch_tokens and data.pad_lengths where given."""
    update = {k: v for k, v in (("batch_tokens", batch_tokens), ("pad_lengths", pad_lengths)) if v is not None}
    if update:
        recipe_data = task.recipe.data
        task.recipe.data = recipe_data.model_copy(update=update)
        try:
            return make_batches(task, n, seed)
        finally:
            task.recipe.data = recipe_data
    module = task.make_datamodule()
    loader = module.train_dataloader()
    bucketed, epoch = [], 0
    while len(bucketed) < n:  # the next epochs' batches where one epoch has fewer than n (large batches)
        loader.batch_sampler.set_epoch(epoch)
        more = [b for b, _ in zip(loader, range(n - len(bucketed)))]
        if not more:
            raise DataError(task.recipe.path, "no training batches")
        bucketed, epoch = bucketed + more, epoch + 1
    pairs = [module.train_set[i] for i in range(len(module.train_set))]
    random.Random(seed).shuffle(pairs)
    unbucketed, start = [], 0
    for b in bucketed:  # same number of sentences per batch, drawn at random (around again past the end)
        size = b["src"].size(0)
        unbucketed.append(module.collator([pairs[(start + k) % len(pairs)] for k in range(size)]))
        start += size
    return bucketed, unbucketed


def compiled(task, loss_fn, **mode):
    """``loss_fn`` with the decoder step compiled (model.compile; ``static=True`` or ``loop=True``: its static
    form, or the teacher-forced loop compiled in chunks) for the call, eager again after."""
    def loss(batch):
        task.decoder.compile_step(**mode)
        try:
            return loss_fn(batch)
        finally:
            task.decoder.compile_step(False)
    loss.compiled = True  # its kernels are the compiler's, not aten operations: ops_per_position does not count them
    return loss


# aten operations that launch no kernel though they are not views: reshapes and splits that skip
# autograd's view tracking, and allocations without a fill
NO_KERNEL_OPS = frozenset({"_unsafe_view", "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk",
                           "empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided"})


class OpCounter(TorchDispatchMode):
    """Counts the aten operations that compute, forward and backward (autograd's engine carries the mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in NO_KERNEL_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def cut_targets(batch: dict, positions: int) -> dict:
    """``batch`` with its targets cut to their first ``positions`` positions."""
    return batch | {"tgt_in": batch["tgt_in"][:, :positions], "tgt_out": batch["tgt_out"][:, :positions]}


def ops_per_position(task, batch, device: str, bf16: bool, loss_fn) -> float:
    """The computing aten operations of one training step's forward and backward (not the optimizer's)
    per target position: the step counted with the batch's targets cut to half their length and whole,
    the difference over the positions between, so that work done once per batch (the encoder, the
    output layer over the real tokens, the loss) cancels out."""
    length = batch["tgt_in"].size(1)
    if length < 2:
        raise ValueError("ops_per_position needs a batch whose targets have two positions or more")
    counts = []
    for positions in (length // 2, length):
        cut = {k: v.to(device) for k, v in cut_targets(batch, positions).items()}
        task.zero_grad(set_to_none=True)  # both counts without gradients to add to
        with OpCounter() as counter:
            loss, _ = forward(cut, device, bf16, loss_fn)
            loss.backward()
        counts.append(counter.count)
    task.zero_grad(set_to_none=True)
    return (counts[1] - counts[0]) / (length - length // 2)


CELL_VARIANTS = {"float32": "bf16-f32cell", "autocast": "bf16-bf16cell", "written": "bf16-writtencell"}
TEACHER_FORCING_WAYS = ("stepwise", "hoisted", "shared")  # RNNDecoder.TEACHER_FORCING's


def other_ways(task, loss_fn, device_type: str) -> dict[str, tuple[bool, object]]:
    """name -> (bf16, ``loss_fn`` with the decoder run another way than this device's default, the
    class's setting changed for the call): teacher forcing the other way (RNNDecoder.TEACHER_FORCING)
    in fp32 and bf16 (each of TEACHER_FORCING_WAYS but the default), and stepwise under bf16 each recurrent cell but the default one
    (RNNDecoder.AUTOCAST_CELL; the default's row is bf16 or bf16-stepwise). None for a decoder without the switches."""
    decoder = type(task.decoder)
    if not hasattr(decoder, "AUTOCAST_CELL") or not hasattr(decoder, "TEACHER_FORCING"):
        return {}

    def with_settings(**settings):
        def loss(batch):
            saved = {name: getattr(decoder, name) for name in settings}
            for name, mode in settings.items():
                setattr(decoder, name, {**saved[name], device_type: mode})
            try:
                return loss_fn(batch)
            finally:
                for name, value in saved.items():
                    setattr(decoder, name, value)
        return loss
    default_way = decoder.TEACHER_FORCING.get(device_type, "stepwise")
    ways = {f"{prefix}{way}": (bf16, with_settings(TEACHER_FORCING=way))
            for way in TEACHER_FORCING_WAYS if way != default_way for prefix, bf16 in (("", False), ("bf16-", True))}
    default_cell = decoder.AUTOCAST_CELL.get(device_type, "autocast")
    return ways | {name: (True, with_settings(TEACHER_FORCING="stepwise", AUTOCAST_CELL=mode))
                   for mode, name in CELL_VARIANTS.items() if mode != default_cell}


def variants(task, bucketed, unbucketed, compile_: bool = False, device_type: str = "cpu",
             resized: dict[int, list] | None = None, padded: list | None = None) -> tuple[dict, str]:
    """(name -> (batches, bf16, loss), the unit); ``loss(batch)`` gives (the loss to minimise, tokens counted).
    ``resized``: batch_tokens -> bucketed batches of that size, measured in fp32 and bf16; ``padded``: the
    bucketed batches padded to a few shapes, measured with the static compiled step."""
    from nmt.tasks.labels import LabelTask

    if isinstance(task, LabelTask):
        def plain(batch):
            return task.train_loss(batch)[0], int(batch["src_len"].sum())

        def adversarial(batch):
            loss, adversarial_loss, _ = task.adversarial_losses(batch, 1.0)
            return loss + adversarial_loss, int(batch["src_len"].sum())

        return {"nmt": (bucketed, False, plain), "adversarial": (bucketed, False, adversarial)} | resized_variants(resized, plain), "tokens/s"

    def seq2seq(batch):
        total, ntokens = task.loss(batch, label_smoothing=0.1)
        return total / ntokens, ntokens

    measured = {"nmt": (bucketed, False, seq2seq), "bf16": (bucketed, True, seq2seq), "unbucketed": (unbucketed, False, seq2seq)}
    measured |= {name: (bucketed, bf16, loss) for name, (bf16, loss) in other_ways(task, seq2seq, device_type).items()}
    if compile_:
        measured |= {"compiled": (bucketed, False, compiled(task, seq2seq)), "bf16+compiled": (bucketed, True, compiled(task, seq2seq))}
        if hasattr(task.decoder, "LOOP_CHUNKS"):
            loop = compiled(task, seq2seq, loop=True)
            measured |= {"loop": (bucketed, False, loop), "bf16+loop": (bucketed, True, loop)}
    if padded is not None:
        static = compiled(task, seq2seq, static=True)
        measured |= {"static": (padded, False, static), "bf16+static": (padded, True, static)}
    return measured | resized_variants(resized, seq2seq), "target tokens/s"


def resized_variants(resized: dict[int, list] | None, loss_fn) -> dict:
    """nmt@N and bf16@N for each batch size N of ``resized``."""
    return {f"{name}@{size}": (batches, bf16, loss_fn)
            for size, batches in (resized or {}).items() for name, bf16 in (("nmt", False), ("bf16", True))}


def forward(batch, device: str, bf16: bool, loss_fn):
    """``loss_fn(batch)`` under bf16 autocast or none: (the loss to minimise, tokens counted)."""
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        return loss_fn(batch)


def step(task, optimizer, batch, device, bf16: bool, loss_fn) -> int:
    batch = {k: v.to(device) for k, v in batch.items()}
    loss, ntokens = forward(batch, device, bf16, loss_fn)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return ntokens


PROFILED_STEPS = 3  # steps of each variant under --profile, after its timed ones
PROFILE_TOP = 8  # rows of each table of --profile


def profile_variant(task, optimizer, batches, device: str, bf16: bool, loss_fn, steps: int = PROFILED_STEPS) -> dict:
    """Where ``steps`` training steps of one variant spend their time, under ``torch.profiler``: the wall
    time a step, each aten operation's calls and self CPU time a step and, on CUDA, each kernel's
    launches and time a step, and the time a step the device was busy (launch-bound: far below the wall)."""
    from collections import Counter

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    steps = min(steps, len(batches))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for batch in batches[:steps]:
            step(task, optimizer, batch, device, bf16, loss_fn)
        wall = time.perf_counter() - start
    calls, cpu_ms, launches, device_ms = Counter(), Counter(), Counter(), Counter()  # each a step
    for event in prof.events():
        if event.device_type == DeviceType.CPU and event.name.startswith("aten::"):
            calls[event.name] += 1 / steps
            cpu_ms[event.name] += event.self_cpu_time_total / 1000 / steps
        elif event.device_type != DeviceType.CPU:  # a kernel, copy or fill on the device
            launches[event.name] += 1 / steps
            device_ms[event.name] += event.time_range.elapsed_us() / 1000 / steps
    return {"steps": steps, "ms": 1000 * wall / steps, "calls": calls, "cpu_ms": cpu_ms, "launches": launches,
            "device_ms": device_ms}


def profile_lines(name: str, device: str, profiled: dict) -> list[str]:
    """One summary line (``profile NAME: ...``, what benchmarks/gpu_check.sh tabulates), then the top
    kernels by device time (CUDA) and the top aten operations by self CPU time."""
    busy_ms = sum(profiled["device_ms"].values())
    busy = (f", {sum(profiled['launches'].values()):.0f} kernels a step, the device busy {busy_ms:.1f} ms a step "
            f"({100 * busy_ms / profiled['ms']:.0f}%)") if profiled["launches"] else ""
    lines = [f"profile {name}: {profiled['steps']} steps on {device}, {profiled['ms']:.1f} ms a step{busy}"]
    for title, count, spent in (("kernel", "launches", "device_ms"), ("aten operation, self CPU time", "calls", "cpu_ms")):
        if profiled[count]:
            lines.append(f"    {title:<70} {'a step':>8} {'ms a step':>10}")
            lines += [f"    {key[:70]:<70} {profiled[count][key]:8.1f} {profiled[spent][key]:10.2f}"
                      for key in sorted(profiled[spent], key=profiled[spent].get, reverse=True)[:PROFILE_TOP]]
    return lines


class Stopped(Exception):
    """SIGTERM during the steps (``timeout`` sends it): the rates of the steps timed so far are printed."""


def _stop(signum, frame):
    raise Stopped


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ScriptArguments(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=bounded(int, 1, MAX_STEPS), default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also the decoder step through torch.compile (model.compile)")
    parser.add_argument("--warmup", type=bounded(int, 0, MAX_STEPS), default=2,
                        help="untimed steps per variant first (compilation falls here)")
    parser.add_argument("--batch-tokens", type=bounded(int, 1, MAX_BATCH_TOKENS), nargs="+", default=[], metavar="N",
                        help="also batches of N tokens instead of data.batch_tokens, fp32 and bf16: nmt@N, bf16@N")
    parser.add_argument("--static", type=bounded(int, 1, MAX_PAD_LENGTH), nargs="+", default=None, metavar="L",
                        help="also the batches padded to these lengths (data.pad_lengths), the step compiled per shape")
    parser.add_argument("--profile", nargs="+", default=[], metavar="VARIANT",
                        help=f"after the timed steps, {PROFILED_STEPS} steps of each named variant under torch.profiler "
                             "(printed after the table): the wall, the aten operations and (CUDA) the kernels and "
                             "device time of a step")
    args = parser.parse_args(argv)
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UserError("--device", f"expected cpu, cuda or cuda:N, got {args.device!r}") from None
    if args.static is not None:  # the lengths as the recipe key data.pad_lengths would take them
        from nmt.recipe import RecipeError, load_recipe
        try:
            load_recipe(args.recipe, [f"data.pad_lengths=[{','.join(map(str, args.static))}]"], check_data=False)
        except RecipeError as exc:
            if exc.where and "data.pad_lengths" in exc.where:  # not the recipe file itself
                raise UserError(f"--static {' '.join(map(str, args.static))}", exc.what) from None
            raise
    recipe, task = build(args.recipe, args.device)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-4)
    bucketed, unbucketed = make_batches(task, args.steps + args.warmup)
    resized = {n: make_batches(task, args.steps + args.warmup, batch_tokens=n)[0] for n in args.batch_tokens}
    padded = None if args.static is None else make_batches(task, args.steps + args.warmup, pad_lengths=args.static)[0]
    measured, unit = variants(task, bucketed, unbucketed, args.compile, torch.device(args.device).type, resized, padded)
    if unknown := [name for name in args.profile if name not in measured]:
        raise UserError("--profile", f"no variant {', '.join(unknown)} in this run (measured: {', '.join(measured)})")
    if padded is not None:  # compile every shape now, not in the timed steps
        shapes = {(b["src"].shape, b["tgt_in"].shape): b for b in padded}
        cells = sum(b["src"].numel() + b["tgt_in"].numel() for b in padded) / sum(b["src"].numel() + b["tgt_in"].numel() for b in bucketed)
        print(f"static: {len(shapes)} batch shapes among {len(padded)} batches, x{cells:.2f} the token cells of "
              f"the unpadded batches", file=sys.stderr)
        for name in ("static", "bf16+static"):
            for batch in shapes.values():
                step(task, optimizer, batch, args.device, measured[name][1], measured[name][2])
    if "loop" in measured:  # compile the loop's graph of each chunk length now, not in the timed steps
        longest = max(bucketed, key=lambda b: b["tgt_in"].size(1))
        for name in ("loop", "bf16+loop"):
            begin = time.perf_counter()
            for length in task.decoder.LOOP_CHUNKS:
                if length <= longest["tgt_in"].size(1):
                    step(task, optimizer, cut_targets(longest, length), args.device, measured[name][1], measured[name][2])
            print(f"{name}: chunk lengths {task.decoder.LOOP_CHUNKS} compiled and run in {time.perf_counter() - begin:.0f} s",
                  file=sys.stderr)
    tokens = dict.fromkeys(measured, 0)
    seconds = dict.fromkeys(measured, 0.0)
    timed = 0  # timed steps of every variant so far
    ops = {}  # operations per target position of each eager variant, counted after the timed steps
    profiles: list[list[str]] = []  # each --profile variant's lines, profiled after the timed steps
    phase = ""  # what the steps were doing once they were all timed
    previous = signal.signal(signal.SIGTERM, _stop)  # a timeout's signal: report the steps timed so far
    try:
        for i in range(args.steps + args.warmup):
            this = {}
            for name, (batches, bf16, loss_fn) in measured.items():
                start = time.perf_counter()
                n = step(task, optimizer, batches[i], args.device, bf16, loss_fn)
                this[name] = (n, time.perf_counter() - start)
            if i >= args.warmup:  # the first steps warm up allocators and kernels (and compile)
                for name, (n, spent) in this.items():
                    tokens[name] += n
                    seconds[name] += spent
                timed += 1
        phase = "while profiling"  # first, as a deadline may not leave time for both: the profiles, then the counts
        for name in args.profile:
            batches, bf16, loss_fn = measured[name]
            profiles.append(profile_lines(name, args.device, profile_variant(task, optimizer, batches, args.device, bf16, loss_fn)))
        phase = "while counting operations per position"
        if "tgt_in" in bucketed[0]:  # a translation recipe: each on its variant's longest batch
            try:
                for name, (batches, bf16, loss_fn) in measured.items():
                    if not getattr(loss_fn, "compiled", False):
                        ops[name] = ops_per_position(task, max(batches, key=lambda b: b["tgt_in"].size(1)),
                                                     args.device, bf16, loss_fn)
            except Stopped:
                raise
            except Exception as exc:  # another torch's dispatch internals: the rates still print
                print(f"operations per position not counted: {type(exc).__name__}: {exc}", file=sys.stderr)
    except Stopped:
        during = phase if timed == args.steps else f"after {timed} of {args.steps} timed steps"
        print(f"stopped by SIGTERM {during}", file=sys.stderr)
        if not timed:
            return {}
    finally:
        signal.signal(signal.SIGTERM, previous)
    rates = {name: tokens[name] / seconds[name] for name in measured}
    print(f"{recipe.name}: {timed} training steps per variant on {args.device} "
          f"({torch.get_num_threads()} threads), ~{sum(b['src'].size(0) for b in bucketed) / len(bucketed):.0f} sentences per batch")
    for name, rate in rates.items():
        count = f"   {ops[name]:6.1f} ops/position" if name in ops else ""
        print(f"  {name:<15} {rate:9.0f} {unit}   x{rate / rates['nmt']:.2f}{count}")
    for lines in profiles:
        print("\n".join(lines))
    return rates


if __name__ == "__main__":
    sys.exit(script_main(lambda argv: 0 if main(argv) else 1))
