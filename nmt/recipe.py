"""Recipes: YAML loading, ``key.path=value`` overrides and validation into typed objects.

Every error names where it happened (file and line for YAML syntax, the dotted key path for
everything else) and what was expected, so a user never has to read a traceback.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, ValidationError

from nmt import registry
from nmt.errors import DataError, PluginError, RecipeError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    scheduler: Literal["plateau", "none"] = "plateau"
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(2, ge=0)
    min_lr: NonNegativeFloat = 1e-6
    # Validate, checkpoint and predict with an exponential moving average of the weights (Polyak averaging),
    # updated after every optimiser step: w_avg = decay * w_avg + (1 - decay) * w. None: the raw weights.
    ema_decay: Optional[float] = Field(None, gt=0.0, lt=1.0)


class EarlyStoppingConfig(Section):
    patience: Optional[int] = Field(None, ge=1)  # validations without improvement; None: off
    min_delta: NonNegativeFloat = 0.0


class RecipeSpec(Section):
    """The top level of a recipe file; ``data`` and ``model`` are validated by the task."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    task: str
    plugins: list[str] = []
    seed: int = 1234
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    optim: OptimConfig = OptimConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    trainer: dict[str, Any] = {}


@dataclass
class Recipe:
    """A validated recipe: the raw mapping (saved in the run directory) and its typed parts."""

    path: Path
    raw: dict[str, Any]
    spec: RecipeSpec
    task_cls: type
    data: Any = None  # the task's DataConfig
    model: Any = None  # the task's ModelConfig
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


# --- loading --------------------------------------------------------------------------------

class RecipeLoader(yaml.SafeLoader):
    """Safe YAML, except that ``1e-3`` is a float as in YAML 1.2 (PyYAML's 1.1 rules make it a string)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_recipe(path: str | os.PathLike, overrides: list[str] = (), check_data: bool = True) -> Recipe:
    """Load, override and validate a recipe; raise :class:`RecipeError` naming the key on failure."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(path, "recipe file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(where, f"invalid YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(path, f"not UTF-8 text ({exc.reason})") from None
    if not isinstance(raw, dict):
        raise RecipeError(path, f"expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    return validate_recipe(raw, path, list(overrides), check_data=check_data)


def validate_recipe(raw: dict, path: Path, overrides: list[str] = (), check_data: bool = True) -> Recipe:
    spec = validate_section(RecipeSpec, raw, "", path, overrides)
    for plugin in spec.plugins:
        registry.load_plugin(plugin, base=path.parent)
    task_cls = registry.get("task", spec.task, where=_where(path, "task", overrides))
    recipe = Recipe(path=path, raw=raw, spec=spec, task_cls=task_cls, overrides=list(overrides))
    recipe.data = validate_section(task_cls.DataConfig, spec.data, "data", path, overrides)
    recipe.model = validate_section(task_cls.ModelConfig, spec.model, "model", path, overrides)
    check_trainer_args(spec.trainer, path, overrides)
    try:
        task_cls.check_recipe(recipe, check_data=check_data)
    except (RecipeError, PluginError) as exc:  # plugin sections are checked without the overrides
        prefix = f"{path}: "
        if exc.where and exc.where.startswith(prefix) and overrides:
            where = _where(path, exc.where[len(prefix):], overrides)
            if where != exc.where:
                raise type(exc)(where, exc.what) from None
        raise
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError(f"override '{text}'", "expected key.path=value (e.g. trainer.max_epochs=3)")
    try:
        parsed = yaml.load(value, Loader=RecipeLoader) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # an unparsable value is taken as a plain string; validation decides
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (values parsed as YAML)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise RecipeError(f"override '{text}'", f"{where} is {_article(type(child).__name__)}, not a section")
            node = child
        node[keys[-1]] = value
    return raw


# --- validation -----------------------------------------------------------------------------

def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def validate_section(model: type[BaseModel], data: Any, prefix: str, path: Path, overrides=()) -> Any:
    """Validate ``data`` into ``model``; the first problem becomes one :class:`RecipeError`."""
    try:
        return model.model_validate(_with_default_names(model, data if data is not None else {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error["loc"]]
        key = ".".join(([prefix] if prefix else []) + loc) or prefix or "(top level)"
        raise RecipeError(_where(path, key, overrides), describe_error(error, model, loc)) from None


def _with_default_names(model: type[BaseModel], data: Any) -> Any:
    """A plugin section given without ``name`` keeps its default plugin (``model.encoder.hidden_size=512``
    on a recipe that never names the encoder means the default encoder, resized)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key, info in model.model_fields.items():
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        value = data.get(key)
        if isinstance(default, dict) and "name" in default and isinstance(value, dict) and "name" not in value:
            data[key] = {"name": default["name"], **value}
    return data


def _where(path: Path, key: str, overrides) -> str:
    """``override KEY`` when an override sets ``key`` (or a section holding it), else the recipe file."""
    for text in overrides:
        target = text.partition("=")[0].strip()
        if key == target or key.startswith(target + "."):
            return f"override {key}"
    return f"{path}: {key}"


def describe_error(error: dict, model: type[BaseModel], loc: list[str]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
        return f"unknown key; {hint}"
    if kind == "missing":
        return "required key is missing"
    value = error.get("input")
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"


def _known_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:  # walk nested sections to the one holding the unknown key
        info = model.model_fields.get(part)
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


OWNED_TRAINER_ARGS = {"logger", "callbacks", "default_root_dir", "enable_checkpointing", "plugins"}


def check_trainer_args(trainer: dict, path: Path, overrides=()) -> None:
    """The ``trainer:`` section goes to Lightning's Trainer: reject names it would not accept."""
    import pytorch_lightning as pl

    accepted = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key in trainer:
        if key in OWNED_TRAINER_ARGS:
            raise RecipeError(_where(path, f"trainer.{key}", overrides), "set by nmt from the run directory; remove it")
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(_where(path, f"trainer.{key}", overrides), f"unknown Trainer argument{hint}")


def component(kind: str, section: dict | None, key: str, path: Path) -> tuple[type, Any]:
    """Resolve ``{name: ..., **options}`` to a registered class and its validated Config."""
    if not isinstance(section, dict) or not section.get("name"):
        raise RecipeError(f"{path}: {key}.name", f"required: the name of a registered {kind}")
    options = {k: v for k, v in section.items() if k != "name"}
    cls = registry.get(kind, section["name"], where=f"{path}: {key}.name")
    return cls, validate_section(cls.Config, options, key, path)


# --- data files -----------------------------------------------------------------------------

def default_data_root() -> Path:
    """``$NMT_DATA``, else ``../shared/data`` beside the checkout (or the working dir), else ``data``."""
    if os.environ.get("NMT_DATA"):
        return Path(os.environ["NMT_DATA"]).expanduser()
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return Path("data").resolve()


def resolve_data_path(name: str | os.PathLike, root: str | os.PathLike | None, check: bool = True) -> Path:
    """A data path from a recipe: ``${VAR}`` expanded, relative paths under the data root."""
    root = Path(os.path.expandvars(str(root))).expanduser() if root else default_data_root()
    path = Path(os.path.expandvars(str(name))).expanduser()
    path = path if path.is_absolute() else root / path
    if check and not path.exists():
        raise DataError(path, f"file not found; put the data set under {root} or set NMT_DATA (or data.root)")
    return path
