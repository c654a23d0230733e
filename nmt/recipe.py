"""Recipes: YAML loading, ``key.path=value`` overrides and validation into typed objects.

Every error names where it happened (file and line for YAML syntax, the dotted key path for
everything else) and what was expected, so a user never has to read a traceback.
"""
from __future__ import annotations

import copy
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nmt import registry
from nmt.errors import DataError, PluginError, RecipeError, closest, quote, shorten
from nmt.io import describe_file_kind
from nmt.recipe_trainer import check_trainer_args
from nmt.recipe_yaml import RecipeLoader, RecipeYAMLProblem, read_recipe_file  # noqa: F401 (read_recipe_file: API)


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# pydantic's PositiveFloat lets .inf through (and ge/le bounds let nothing else stop it): an infinite
# learning rate or decay only shows up as NaN weights an epoch later.
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFinite = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@dataclass(frozen=True)
class PluginKind:
    """Marks a recipe field as a plugin section ``{name: ..., **options}`` of this registry kind."""

    kind: str


# A task declares its plugin sections with these types; each is resolved once, when the recipe is
# validated, into ``Recipe.components`` (the raw mapping stays in the section and in ``Recipe.raw``).
EncoderSection = Annotated[dict[str, Any], PluginKind("encoder")]
DecoderSection = Annotated[dict[str, Any], PluginKind("decoder")]
AttentionSection = Annotated[dict[str, Any], PluginKind("attention")]
TokenizerSection = Annotated[dict[str, Any], PluginKind("tokenizer")]


class Component(NamedTuple):
    """A resolved plugin section: the registered class and its validated ``Config``."""

    cls: type
    config: Any


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=1e3, allow_inf_nan=False)  # 1e300 overflowed inside the optimizer
    weight_decay: NonNegativeFinite = 0.0
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # plateau: halve on a stalled dev score (stepped after each validation). The others are stepped
    # every optimiser step after warmup_steps of linear warm-up from 0: warmup keeps lr, inverse_sqrt
    # decays it as sqrt(warmup_steps / step) (Vaswani et al. 2017), cosine anneals it to min_lr at
    # total_steps (default: what trainer.max_steps or max_epochs make).
    scheduler: Literal["plateau", "none", "warmup", "inverse_sqrt", "cosine"] = "plateau"
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(2, ge=0)
    warmup_steps: int = Field(0, ge=0, le=10_000_000)
    total_steps: Optional[int] = Field(None, ge=1, le=1_000_000_000)
    min_lr: NonNegativeFinite = 1e-6
    # Validate, checkpoint and predict with an exponential moving average of the weights (Polyak averaging),
    # updated after every optimiser step: w_avg = decay * w_avg + (1 - decay) * w. None: the raw weights.
    ema_decay: Optional[float] = Field(None, gt=0.0, lt=1.0)


class EarlyStoppingConfig(Section):
    patience: Optional[int] = Field(None, ge=1)  # validations without improvement; None: off
    min_delta: NonNegativeFinite = 0.0


class CheckpointConfig(Section):
    # How many checkpoints a run keeps for ``nmt average``: 1 keeps best.ckpt and last.ckpt only; N > 1
    # also keeps the N best by the monitored score (best-<step>.ckpt) and the N latest validations
    # (step-<step>.ckpt). Each is a full checkpoint, as large as last.ckpt.
    keep: int = Field(1, ge=1, le=100)


class RecipeSpec(Section):
    """The top level of a recipe file; ``data`` and ``model`` are validated by the task."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    task: str
    plugins: list[str] = []
    seed: int = Field(1234, ge=0, le=2**32 - 1, strict=True)  # seed_everything's range; true is no seed
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    optim: OptimConfig = OptimConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
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
    # Each plugin section, resolved once at validation: "model.encoder" -> Component(cls, config).
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


# --- loading --------------------------------------------------------------------------------

def load_recipe(path: str | os.PathLike, overrides: list[str] = (), check_data: bool = True) -> Recipe:
    """Load, override and validate a recipe; raise :class:`RecipeError` naming the key on failure."""
    path = Path(path)
    raw = apply_overrides(read_recipe_file(path), overrides)
    return validate_recipe(raw, path, list(overrides), check_data=check_data)


def validate_recipe(raw: dict, path: Path, overrides: list[str] = (), check_data: bool = True) -> Recipe:
    spec = validate_section(RecipeSpec, raw, "", path, overrides)
    for plugin in spec.plugins:
        registry.load_plugin(plugin, base=path.parent)
    task_cls = registry.get("task", spec.task, where=_where(path, "task", overrides))
    recipe = Recipe(path=path, raw=raw, spec=spec, task_cls=task_cls, overrides=list(overrides))
    recipe.data = validate_section(task_cls.DataConfig, spec.data, "data", path, overrides)
    recipe.model = validate_section(task_cls.ModelConfig, spec.model, "model", path, overrides)
    check_trainer_args(spec.trainer, lambda key: _where(path, key, overrides))
    check_schedule(spec.optim, lambda key: _where(path, key, overrides))
    recipe.components = resolve_components({"data": recipe.data, "model": recipe.model}, path, overrides)
    try:
        task_cls.check_recipe(recipe, check_data=check_data)
    except (RecipeError, PluginError) as exc:  # a task names the recipe file; name the override that set the key
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
        raise RecipeError(f"override '{shorten(text)}'", "expected key.path=value (e.g. trainer.max_epochs=3)")
    try:
        parsed = yaml.load(value, Loader=RecipeLoader) if value.strip() else ""
    except RecipeYAMLProblem as exc:
        raise RecipeError(f"override '{shorten(text)}'", exc.what) from None
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
                raise RecipeError(f"override '{shorten(text)}'", f"{shorten(where)} is {_article(type(child).__name__)}, not a section")
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
        error = _for_the_given_shape(exc.errors())
        loc = _without_union_tags(model, error["loc"])
        key = shorten(".".join(([prefix] if prefix else []) + loc) or prefix or "(top level)", 200)
        raise RecipeError(_where(path, key, overrides), describe_error(error, model, loc)) from None


def _for_the_given_shape(errors: list[dict]) -> dict:
    """The error to report: for a value that may be one thing or a list of them (``data.train``), pydantic
    reports each alternative; a value of neither shape gets the first, else the one of its own shape."""
    wrong_shape = {"list_type", "model_type", "dict_type", "model_attributes_type"}
    return next((e for e in errors if e["type"] not in wrong_shape), errors[0])


def _without_union_tags(model: type[BaseModel], loc) -> list[str]:
    """``loc`` without the names pydantic inserts for the alternative of a Union it tried
    (``data.train.ParallelFiles.tgt`` is ``data.train.tgt`` to the user)."""
    kept, annotation = [], model
    for part in loc:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            tags = {getattr(a, "__name__", None) or str(a) for a in args} | {_tag(a) for a in args}
            if part in tags:
                annotation = next((a for a in args if part in (getattr(a, "__name__", None), _tag(a))), None)
                continue
            annotation = next((a for a in args if a is not type(None)), None)
            origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        kept.append(str(part))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            annotation = info.annotation if info is not None else None
        elif origin in (list, dict) and args:
            annotation = args[-1]
        else:
            annotation = None
    return kept


def _tag(annotation) -> str:
    """How pydantic names a Union alternative in an error location: ``ParallelFiles``, ``list[ParallelFiles]``."""
    args = typing.get_args(annotation)
    if args:
        return f"{typing.get_origin(annotation).__name__}[{','.join(_tag(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


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
    """``override KEY`` when an override sets ``key``, a section holding it, or a key inside it (a misspelt
    section an override made: ``model.embeding.size=8``), else the recipe file."""
    for text in overrides:
        target = text.partition("=")[0].strip()
        if key == target or key.startswith(target + ".") or target.startswith(key + "."):
            return f"override {key}"
    return f"{path}: {key}"


def check_schedule(optim: OptimConfig, where) -> None:
    """Settings each valid alone that make a schedule other than the one asked for."""
    if optim.scheduler == "cosine" and optim.min_lr > optim.lr:  # it annealed upwards, to min_lr
        raise RecipeError(where("optim.min_lr"), f"{optim.min_lr:g} is above optim.lr ({optim.lr:g}): the cosine "
                                                 "schedule would raise the learning rate to it; expected at most optim.lr")
    if optim.total_steps is not None and optim.warmup_steps >= optim.total_steps:
        raise RecipeError(where("optim.warmup_steps"), f"{optim.warmup_steps} is not below optim.total_steps "
                                                       f"({optim.total_steps}): the schedule would never leave its warm-up")


def describe_error(error: dict, model: type[BaseModel], loc: list[str]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = closest(loc[-1], known)
        hint = f"did you mean '{close}'?" if close else f"expected one of: {', '.join(known)}"
        return f"unknown key; {hint}"
    if kind == "missing":
        return "required key is missing"
    msg = shorten(error["msg"], 200)  # pydantic may quote a pattern or a list of choices, never the input
    return f"{msg[0].lower()}{msg[1:]}, got {quote(error.get('input'))}"


def _known_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:  # walk nested sections to the one holding the unknown key
        info = model.model_fields.get(part)
        annotation = getattr(info, "annotation", None)
        # an optional section (Optional[Sampling]): the section inside
        annotation = next((arg for arg in typing.get_args(annotation) if isinstance(arg, type)
                           and issubclass(arg, BaseModel)), annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def component(kind: str, section: dict | None, key: str, path: Path, overrides=()) -> Component:
    """Resolve ``{name: ..., **options}`` to a registered class and its validated Config."""
    if not isinstance(section, dict) or not section.get("name"):
        misspelt = [k for k in section if closest(k, ["name"])] if isinstance(section, dict) else []
        hint = f" (is '{shorten(misspelt[0])}' meant to be 'name'?)" if misspelt else ""
        raise RecipeError(_where(path, f"{key}.name", overrides), f"required: the name of a registered {kind}{hint}")
    if not isinstance(section["name"], str):  # a list or mapping was an unhashable-type TypeError
        raise RecipeError(_where(path, f"{key}.name", overrides), f"expected the name of a registered {kind} "
                                                                  f"(a string), got {quote(section['name'])}")
    options = {k: v for k, v in section.items() if k != "name"}
    cls = registry.get(kind, section["name"], where=_where(path, f"{key}.name", overrides))
    undeclared = _undeclared_key(cls.Config, options)
    if undeclared is not None:  # pydantic's default (extra="ignore") would train with the default instead
        where = _where(path, shorten(".".join([key, *undeclared]), 200), overrides)
        if len(undeclared) == 1 and closest(undeclared[0], ["name"]):  # not a Config key: the section's own
            raise RecipeError(where, "unknown key; did you mean 'name'?")
        raise RecipeError(where, describe_error({"type": "extra_forbidden"}, cls.Config, undeclared))
    return Component(cls, validate_section(cls.Config, options, key, path, overrides))


def _undeclared_key(model: type[BaseModel], data: Any) -> list[str] | None:
    """The path of the first key in ``data`` that ``model`` (or a section nested in it) does not declare,
    whatever its ``extra`` setting: a plugin's Config that leaves pydantic's default ignores a misspelt
    key, and the recipe would silently train at the default. None when every key is declared."""
    if not isinstance(data, dict):
        return None
    declared = {alias: info for name, info in model.model_fields.items()
                for alias in (name, info.alias, info.validation_alias) if isinstance(alias, str)}
    for key, value in data.items():
        info = declared.get(key)
        if info is None:
            return [str(key)]
        nested = _section_model(info.annotation)
        inner = _undeclared_key(nested, value) if nested is not None else None
        if inner is not None:
            return [str(key), *inner]
    return None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, also inside Optional[...]; None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((arg for arg in typing.get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)),
                None)


def resolve_components(sections: dict[str, BaseModel], path: Path, overrides=()) -> dict[str, Component]:
    """Every plugin section (a field typed ``EncoderSection``, ``TokenizerSection`` ...) under ``sections``,
    nested sections included, resolved by :func:`component`, keyed by its dotted path; None is skipped."""
    found: dict[str, Component] = {}
    stack = list(sections.items())
    while stack:
        prefix, section = stack.pop(0)
        for name, info in type(section).model_fields.items():
            value, key = getattr(section, name), f"{prefix}.{name}"
            kind = _plugin_kind(info.metadata, info.annotation)
            if kind is not None and value is not None:
                found[key] = component(kind, value, key, path, overrides)
            elif isinstance(value, BaseModel):
                stack.append((key, value))
    return found


def _plugin_kind(metadata: list, annotation: Any) -> str | None:
    """The registry kind a field's annotation marks with :class:`PluginKind` (also inside Optional[...])."""
    for item in metadata:
        if isinstance(item, PluginKind):
            return item.kind
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            kind = _plugin_kind(list(arg.__metadata__), None)
            if kind is not None:
                return kind
    return None


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
    if check and not path.is_file():  # /dev/zero was read for ever, a FIFO waited for a writer
        raise DataError(path, f"{describe_file_kind(path)}, not a data file")
    return path
