"""The run directory: a self-contained record of one training run, and loading a model back safely.

Layout::

    run.json            format version, the nmt version that wrote it and the local plugins it was
                        trained with (absolute paths or module names; runs written before: none)
    recipe.yaml         the recipe with every override applied
    fitted/             what the task fitted on the training data: tokenizer models, label sets,
                        scalers; READY once complete (older runs: tokenizer/, still read)
    corpus/             the training corpus, tokenised into memory-mapped shards (seq2seq; see
                        nmt.data.prepared); rebuilt when stale, safe to delete once training is over
    checkpoints/        best.ckpt, last.ckpt (written to a temporary file, then renamed)
    logs/metrics.csv    and tb/ for TensorBoard
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import stat
from pathlib import Path

import torch
import yaml

import nmt
from nmt import registry
from nmt.errors import RecipeError, RunError, UserError, shorten
from nmt.io import atomic_write_text, same_file

RUN_FORMAT = 1
FITTED = "fitted"
LEGACY_FITTED = "tokenizer"  # the name of the fitted folder in runs written before it held more than tokenizers
READY = "READY"  # written by nmt train after prepare_run: a half-fitted run dir is never taken for a finished one


def fitted_dir(run_dir: Path) -> Path:
    """The folder of what a task fitted on the training data (tokenizers, labels, scalers).

    Runs written before it was named for what it holds keep theirs in ``tokenizer/``: that one is
    used while it exists and ``fitted/`` does not, so an old run translates and resumes as it is."""
    run_dir = Path(run_dir)
    legacy = run_dir / LEGACY_FITTED
    if legacy.is_dir() and not (run_dir / FITTED).exists():
        return legacy
    return run_dir / FITTED


def is_rank_zero() -> bool:
    """True in the process that prepares the run (before Lightning has set up distribution)."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` claims to hold a run; :func:`check_run_info` then says whether it really does
    (a run.json that is a folder or a dangling link still claims it, so it is reported, not overwritten)."""
    return os.path.lexists(Path(run_dir) / "run.json")


MAX_RUN_INFO_BYTES = 64 * 1024  # run.json holds a few short fields


def check_run_info(run_dir: Path) -> dict:
    from nmt.io import read_small_file

    info_path = Path(run_dir) / "run.json"
    if not is_run(run_dir):
        raise RunError(run_dir, "not a run directory (no run.json); train one with nmt train")
    # A run directory may come from anyone: run.json may be a folder, a FIFO or a link to /dev/zero.
    text = read_small_file(info_path, MAX_RUN_INFO_BYTES, RunError, "run file")
    try:
        info = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise RunError(info_path, f"unreadable ({reason})") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        got = info if isinstance(info, dict) else {}  # quoted short: the file may be anyone's
        raise RunError(info_path, f"run format {shorten(got.get('format', '?'), 20)} (written by nmt "
                                  f"{shorten(got.get('nmt_version', '?'), 20)}) is not supported by nmt "
                                  f"{nmt.__version__} (format {RUN_FORMAT})")
    return info


def write_run(run_dir: Path, raw_recipe: dict | None) -> None:
    """The run's marks: checkpoints/, run.json and (unless None) its recipe.yaml."""
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if raw_recipe is not None:
        atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(raw_recipe, sort_keys=False, allow_unicode=True))
    if not is_run(run_dir):
        # Every local plugin loaded (--plugin, the recipe's plugins:), as it can be named from any folder:
        # the run's recipe.yaml keeps plugins: as written, relative to a recipe folder the run does not know.
        info = {"format": RUN_FORMAT, "nmt_version": nmt.__version__, "plugins": registry.loaded_plugins()}
        atomic_write_text(run_dir / "run.json", json.dumps(info) + "\n")


def load_run_recipe(run_dir: Path):
    from nmt.recipe import read_recipe_file, validate_recipe

    info = check_run_info(run_dir)
    path = Path(run_dir) / "recipe.yaml"
    # As checked as a user's recipe (size, file type, aliases, duplicate keys): a run directory may
    # come from someone else.
    raw = read_recipe_file(path)
    # A run directory may come from someone else: it never imports code by itself. The plugins it
    # was trained with must be installed, or named again with --plugin (nmt train names them via
    # the recipe, which has loaded them already).
    listed = raw.pop("plugins", None) or []
    recorded = recorded_plugins(info)
    try:
        return validate_recipe(raw, path, check_data=False)
    except UserError as exc:
        if recorded:
            missing = [plugin for plugin in recorded if plugin not in registry.loaded_plugins()]
            if not missing:
                raise
            raise RunError(exc.where, f"{exc.what} ({_plugin_hint(missing)})") from None
        if not listed:
            raise
        raise RunError(exc.where, f"{exc.what} (the run was trained with plugins {', '.join(map(str, listed))}; "
                                  "a run directory does not load code by itself: pass nmt --plugin PATH)") from None


MAX_PLUGINS_NAMED = 8  # run.json may come from anyone: a message names this many of its plugins at most


def recorded_plugins(info: dict) -> list[str]:
    """The local plugins run.json says the run was trained with; [] for a run written before they were
    recorded. Anything but a list of one-line strings is ignored, not trusted into a message."""
    plugins = info.get("plugins")
    if not isinstance(plugins, list):
        return []
    return [p for p in plugins if isinstance(p, str) and p and p.isprintable()]


def _plugin_hint(missing: list[str]) -> str:
    """Which recorded plugins are not loaded, and the exact options that load them."""
    shown = [shorten(plugin, 1000) for plugin in missing[:MAX_PLUGINS_NAMED]]
    more = f" and {len(missing) - len(shown)} more" if len(missing) > len(shown) else ""
    options = " ".join(f"--plugin {shlex.quote(plugin)}" for plugin in shown)
    return (f"the run was trained with plugin{'s' if len(missing) > 1 else ''} {', '.join(shown)}{more}; a run "
            f"directory does not load code by itself: pass nmt {options}")


NAMED_CHECKPOINTS = ("best", "last", "averaged")  # RUN/checkpoints/<name>.ckpt; averaged: written by nmt average


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in NAMED_CHECKPOINTS:
        path = Path(run_dir) / "checkpoints" / f"{checkpoint}.ckpt"
        if checkpoint == "best" and not path.exists():
            path = path.with_name("last.ckpt")  # no validation finished yet: the latest weights
        elif checkpoint == "averaged" and not path.exists():
            raise RunError(path, f"checkpoint not found: write it with nmt average {run_dir} --last N")
    else:
        path = Path(checkpoint)
    if not path.exists():
        raise RunError(path, "checkpoint not found")
    return path


#: ``torch.save`` writes a zip archive; before PyTorch 1.6 it wrote a pickle that begins with this
#: magic number (protocol 2, a 10-byte long). Anything else is not a checkpoint, and handing it to
#: the unpickler only produces a misleading "holds Python objects" refusal.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _check_checkpoint_file(path: Path) -> None:
    """Refuse what is not a checkpoint file before ``torch.load`` reads it: a device such as
    ``/dev/zero`` would be read forever, random bytes or text would be reported as unsafe pickles."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise RunError(path, "is a directory, expected a checkpoint file")
        if not stat.S_ISREG(mode):
            raise RunError(path, "not a regular file, expected a checkpoint file")
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as exc:
        raise RunError(path, f"cannot read checkpoint ({exc.strerror or exc})") from None
    if not head:
        raise RunError(path, "not a PyTorch checkpoint (empty file)")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_MAGIC)):
        raise RunError(path, "not a PyTorch checkpoint (not a zip archive)")


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data, never arbitrary code."""
    _check_checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"(?i)unsupported(?: global:)? GLOBAL ([\w.]+)", str(exc))
        what = f" ({named.group(1)})" if named else ""
        raise RunError(path, "refused to load: the checkpoint holds Python objects beyond weights and plain "
                             f"data{what}, which could run code; only load checkpoints you trust with "
                             "torch.load(weights_only=False) yourself") from None
    except (RuntimeError, EOFError, OSError) as exc:
        reason = str(exc).split(". ")[0].splitlines()[0][:100]
        raise RunError(path, f"unreadable checkpoint, truncated or not a checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise RunError(path, f"not an nmt checkpoint (holds a {type(state).__name__}, expected a dict)")
    return state


def pick_device(device: str) -> torch.device:
    """The ``torch.device`` for ``--device``; one that this machine lacks is a one-line error here,
    not a driver error from deep inside the first ``.to()``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise RecipeError("--device", f"expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError("--device", f"{device}: CUDA is not available on this machine; use --device cpu or auto")
        count = torch.cuda.device_count()
        if picked.index is not None and picked.index >= count:
            raise RecipeError("--device", f"{device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif picked.type == "mps" and not torch.backends.mps.is_available():
        raise RecipeError("--device", f"{device}: MPS is not available on this machine; use --device cpu or auto")
    elif picked.type not in ("cpu", "cuda", "mps"):
        raise RecipeError("--device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    return picked


def check_weights_fit(task, weights: dict, path: Path) -> None:
    """One line naming the first parameter whose shape or name differs: ``load_state_dict`` would
    list every one of them over dozens of lines (another run's checkpoint, an edited recipe)."""
    own = task.state_dict()
    differ = [(name, tuple(weights[name].shape), tuple(own[name].shape)) for name in own
              if name in weights and hasattr(weights[name], "shape") and tuple(weights[name].shape) != tuple(own[name].shape)]
    missing = [name for name in own if name not in weights]
    unexpected = [name for name in weights if name not in own]
    if differ:
        name, theirs, ours = differ[0]
        more = f" ({len(differ) - 1} more parameters differ)" if len(differ) > 1 else ""
        raise RunError(path, f"weights do not fit the run's model: {name} is {list(theirs)} in the checkpoint, "
                             f"{list(ours)} in the model built from the recipe{more}; is it a checkpoint of another run?")
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        count = len(missing) + len(unexpected) - 1
        more = f" ({count} more parameters differ)" if count else ""
        raise RunError(path, f"weights do not fit the run's model: {first}{more}; is it a checkpoint of another run?")


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "auto"):
    """The task of a run with the weights of ``checkpoint``, in eval mode on ``device``."""
    target = pick_device(device)  # before anything slow is loaded
    recipe = load_run_recipe(run_dir)
    task = recipe.task_cls.from_run(recipe, Path(run_dir))
    load_weights(task, checkpoint_path(run_dir, checkpoint))
    return task.to(target).eval()


def load_weights(task, path: Path) -> None:
    """Load the weights of the checkpoint at ``path`` into ``task``, refusing (one line) a file that is
    no nmt checkpoint or whose weights do not fit the task's model."""
    state = load_checkpoint(path)
    if not isinstance(state.get("state_dict"), dict):
        raise RunError(path, "not an nmt checkpoint (no state_dict)")
    check_weights_fit(task, state["state_dict"], path)
    task.load_state_dict(state["state_dict"])


# What a run directory holds of its own (the layout at the top of this module); an output of a command
# that reads the run must not replace any of it.
RUN_FILES = ("run.json", "recipe.yaml")
RUN_FOLDERS = ("checkpoints", FITTED, LEGACY_FITTED, "logs", "tb", "corpus", "onnx")


def refuse_run_files(output: Path | None, run_dirs, checkpoint: str | None = None) -> None:
    """Refuse an ``output`` that is a file of one of ``run_dirs`` (its checkpoints, fitted tokenizers or labels,
    recipe, logs) or the ``checkpoint`` path being loaded: ``nmt predict -o RUN/checkpoints/best.ckpt``
    replaced the run's model with its own predictions. A new file elsewhere in a run folder is allowed."""
    if output is None:
        return
    target = Path(os.path.realpath(output))
    for run_dir in run_dirs:
        try:
            inside = target.relative_to(os.path.realpath(run_dir))
        except ValueError:
            continue
        if inside.parts and (inside.parts[0] in RUN_FOLDERS or inside.as_posix() in RUN_FILES):
            raise UserError(output, f"is a file of the run {run_dir} ({inside.as_posix()}); write the output elsewhere")
    if checkpoint is not None and checkpoint not in NAMED_CHECKPOINTS and same_file(checkpoint, output):
        raise UserError(output, f"is the checkpoint being loaded ({checkpoint}); write the output elsewhere")
