"""The plugin registry: kinds, names, entry-point discovery and explicit local plugins.

A plugin is a class decorated with ``@nmt.register(kind, name)``. Built-in and third-party plugins
are found the same way, through modules named in the ``nmt.plugins`` entry-point group; local code
is imported only when the user names it (``--plugin`` or a recipe's ``plugins:`` list).
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import stat
import sys
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from nmt.errors import PluginError, closest, quote, shorten

ENTRY_POINT_GROUP = "nmt.plugins"
KINDS = ("encoder", "decoder", "attention", "task", "tokenizer")  # what the core knows how to build
# A name is written in recipes and on command lines and listed by ``nmt plugins``, one row per plugin: no
# spaces, newlines or quotes, and short enough for a table column.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: type
    origin: str  # distribution name and version, or a file path

    @property
    def description(self) -> str:
        """The docstring's first line as plain text: reStructuredText roles (:meth:`x`) and literals
        (``x``) are for the API docs, not for a terminal."""
        doc = (inspect.getdoc(self.cls) or "").strip()
        first = doc.splitlines()[0] if doc else ""
        first = re.sub(r":[\w:]+:`~?([^`<]*?)(?:\s*<[^`]*>)?`", r"\1", first)  # :meth:`prepare` -> prepare
        return re.sub(r"``([^`]*)``", r"\1", first)


@dataclass(frozen=True)
class BrokenEntryPoint:
    """An installed ``nmt.plugins`` entry point that failed to load: its names are unknown, so every
    unknown name looked up mentions it, and ``nmt plugins`` lists it."""

    name: str
    origin: str  # distribution name and version
    problem: str  # one line

    @property
    def label(self) -> str:
        return f"entry point '{self.name}' ({self.origin})"


_entries: dict[tuple[str, str], Entry] = {}
_loading_origin: list[str] = []  # origin of the module being imported, innermost last
_discovered = False
_broken: list[BrokenEntryPoint] = []
_loaded: dict[str, None] = {}  # local plugins loaded in this process (absolute file path or module name), in order


def register(kind: str, name: str):
    """Class decorator: make ``cls`` available as ``name`` of ``kind`` (e.g. attention/bahdanau).

    The class is checked against the contract of its kind (:mod:`nmt.contracts`): a ``Config``, the
    constructor and ``forward`` arguments the builders pass, ``output_size`` for encoders and decoders."""
    # Checked here, at import, so a typo in a plugin fails loudly instead of registering a class that
    # no recipe can ever reach.
    where = f"{_loading_origin[-1]}: register({quote(kind)}, {quote(name)})" if _loading_origin \
        else f"register({quote(kind)}, {quote(name)})"
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind)[:100], KINDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PluginError(where, f"unknown plugin kind (known: {', '.join(KINDS)}){hint}")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise PluginError(where, "the name must be 1 to 64 letters, digits or _ . + - (it is written in recipes "
                                 "and listed by nmt plugins)")

    def decorate(cls: type) -> type:
        if not isinstance(cls, type):  # register(...)(SomeModule(...)): its repr may span many lines
            raise PluginError(where, f"expected a class to decorate, got a {type(cls).__name__} object: "
                                     f"{one_line(quote(cls, 60))}")
        origin = _loading_origin[-1] if _loading_origin else _origin_of(cls)
        key = (kind, name)
        old = _entries.get(key)
        if old is not None and old.cls is not cls:
            if _same_definition(old.cls, cls):  # the same module imported again under another name
                return cls
            raise PluginError(
                f"{kind} '{name}'",
                f"registered twice: by {old.origin} ({old.cls.__module__}.{old.cls.__qualname__}) "
                f"and by {origin} ({cls.__module__}.{cls.__qualname__})",
            )
        from nmt.contracts import check_plugin  # here, not at the top: the contracts import torch

        problem = check_plugin(kind, cls)
        if problem:
            raise PluginError(where, f"{cls.__qualname__} does not meet the {kind} contract (nmt.contracts): {problem}")
        _entries[key] = Entry(kind, name, cls, origin)
        cls.registered_name = name
        return cls

    return decorate


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with every run of whitespace (newlines included) as one space, at most ``limit`` characters:
    a plugin's exception or repr may span many lines, an nmt message is one."""
    return shorten(" ".join(str(text).split()), limit)


def _same_definition(a: type, b: type) -> bool:
    try:
        return inspect.getsourcefile(a) == inspect.getsourcefile(b) and a.__qualname__ == b.__qualname__
    except TypeError:
        return False


def _origin_of(cls: type) -> str:
    """The installed distribution that ships ``cls`` (imported directly, not via an entry point), else its file."""
    dists = _distributions().get(cls.__module__.split(".")[0])
    if dists:
        return f"{dists[0]} {importlib.metadata.version(dists[0])}"
    module = sys.modules.get(cls.__module__)
    return getattr(module, "__file__", None) or cls.__module__


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def discover() -> None:
    """Import every module named in the ``nmt.plugins`` entry-point group (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(ep)


def _load_entry_point(ep) -> None:
    """Import one entry point's module. A broken third-party plugin must not take the whole CLI down: a
    run of the built-ins never needs it. It is reported in one warning line, whatever it registered is
    withdrawn, and an unknown name looked up later names it (it may be the plugin that name is from)."""
    dist = getattr(ep, "dist", None)
    origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
    try:
        with _importing(origin):
            importlib.import_module(ep.value.split(":")[0])
    except PluginError as exc:  # a contract, a name, the dtype: said where, without the origin again
        where = exc.where[len(origin):].lstrip(": ") if exc.where and exc.where.startswith(origin) else exc.where
        _mark_broken(ep.name, origin, one_line(f"{where}: {exc.what}" if where else exc.what))
    except (Exception, SystemExit) as exc:
        _mark_broken(ep.name, origin, one_line(f"cannot import {ep.value}: {type(exc).__name__}: {exc}"))


def _mark_broken(name: str, origin: str, problem: str) -> None:
    broken = BrokenEntryPoint(name, origin, problem)
    _broken.append(broken)
    print(f"nmt: warning: {broken.label}: {problem}; its plugins are unavailable", file=sys.stderr)


def broken_entry_points() -> list[BrokenEntryPoint]:
    """The installed entry points that failed to load (``nmt plugins`` lists them)."""
    discover()
    return list(_broken)


def loaded_plugins() -> list[str]:
    """The local plugins loaded in this process (``--plugin``, a recipe's ``plugins:``), each as it can be
    named again from any folder: a file's absolute path, or a module name. A run records them."""
    return list(_loaded)


def _default_dtype():
    """torch's default dtype, or None while torch is not imported (then no plugin can have changed it)."""
    torch = sys.modules.get("torch")
    return torch.get_default_dtype() if torch is not None else None


@contextlib.contextmanager
def _importing(origin: str):
    """Import plugin code from ``origin``: registrations name it, and on failure none of them stays.

    A plugin that changes torch's default dtype on import (``torch.set_default_dtype(torch.float64)``)
    would build every model in it, built-ins too, and fail later with a dtype mismatch naming nothing;
    it is refused here, naming the plugin, and the dtype restored."""
    before, dtype = dict(_entries), _default_dtype()
    _loading_origin.append(origin)
    try:
        yield
        _check_default_dtype(origin, dtype)
    except BaseException:
        _entries.clear()
        _entries.update(before)
        _restore_default_dtype(dtype)
        raise
    finally:
        _loading_origin.pop()


def _check_default_dtype(origin: str, before) -> None:
    after = _default_dtype()
    expected = before if before is not None else getattr(sys.modules.get("torch"), "float32", None)
    if after != expected:
        name = str(after).replace("torch.", "")
        raise PluginError(origin, f"changed torch's default dtype to {name} when imported (torch.set_default_dtype); "
                                  f"nmt builds {str(expected).replace('torch.', '')} models: set trainer.precision "
                                  "instead, or the dtype of the plugin's own tensors")


def _restore_default_dtype(before) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_default_dtype(before if before is not None else torch.float32)


def plugin_file(spec: str, path: Path) -> Path:
    """The Python file of a plugin named by path: ``path`` itself, a regular ``.py`` file, or a package
    directory's ``__init__.py``. Anything else is a PluginError: importlib has no loader for other names
    (an AttributeError deep inside it), and opening a FIFO would wait for a writer forever."""
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise PluginError(spec, "a directory without __init__.py; expected a .py file or a package directory")
        return path / "__init__.py"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PluginError(spec, "plugin file not found") from None
    except OSError as exc:
        raise PluginError(spec, f"cannot read plugin ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise PluginError(spec, "not a regular file; expected a .py file or a package directory")
    if path.suffix != ".py":
        raise PluginError(spec, "not a Python file (.py) or a package directory")
    return path


def load_plugin(spec: str, base: Path | None = None) -> None:
    """Import local plugin code named explicitly: a ``.py`` file, a package directory or a module."""
    discover()
    path = Path(spec)
    if base is not None and not path.is_absolute() and (base / path).exists():
        path = base / path
    if spec.endswith(".py") or path.exists():
        _load_file(spec, path)
    else:
        _load_module(spec)


def _load_file(spec: str, named: Path) -> None:
    """A ``.py`` file or package directory ``named`` by the user, recorded as its absolute path."""
    path = plugin_file(spec, named)
    module_name = f"nmt_local_plugin_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:  # loaded already (by the recipe, after --plugin)
        _loaded[str(named.resolve())] = None
        return
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        with _importing(str(path)):
            module_spec.loader.exec_module(module)
    except PluginError:
        del sys.modules[module_name]
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() in a plugin would end nmt without a word
        del sys.modules[module_name]
        raise PluginError(str(path), f"cannot load plugin: {type(exc).__name__}: {one_line(exc)}") from exc
    _loaded[str(named.resolve())] = None


def _load_module(spec: str) -> None:
    try:
        with _importing(spec):
            importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise PluginError(spec, f"plugin module not found ({exc})") from exc
        raise PluginError(spec, f"cannot load plugin: {type(exc).__name__}: {one_line(exc)}") from exc
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:  # as for a file: a broken plugin is the user's to fix, not a crash
        raise PluginError(spec, f"cannot load plugin: {type(exc).__name__}: {one_line(exc)}") from exc
    _loaded[spec] = None


def get(kind: str, name: str, where: str | None = None) -> type:
    """Return the class registered as ``name`` of ``kind``; a typo gets a close-match suggestion."""
    discover()
    entry = _entries.get((kind, name))
    if entry is not None:
        return entry.cls
    known = names(kind)
    close = closest(name, known)
    hint = f"; did you mean '{close}'?" if close else f"; known: {', '.join(known) or 'none'}"
    raise PluginError(where, f"unknown {kind} {quote(name)}{hint}{_broken_hint()}")


def _broken_hint() -> str:
    """For an unknown name: the installed entry points that failed to load, one of which may be its plugin."""
    return "".join(f"; {b.label} may provide it but failed to load: {b.problem}" for b in _broken)


def registered_entry(kind: str, cls: type) -> Entry | None:
    """The entry of ``cls`` as a ``kind``, or of its nearest registered base class (a plugin's subclass that
    was never registered itself, e.g. a test's wrapper); None when neither is registered."""
    for base in cls.__mro__:
        name = base.__dict__.get("registered_name")
        entry = _entries.get((kind, name)) if isinstance(name, str) else None
        if entry is not None and entry.cls is base:
            return entry
    return None


def describe(kind: str, plugin: Any) -> str:
    """``plugin`` (a class or an instance) as a message names it: ``encoder 'gru' (nmt 0.1.0)``, the kind,
    registered name and where it came from (file or distribution), as ``nmt plugins`` lists it."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    entry = registered_entry(kind, cls)
    if entry is None:
        return f"{kind} {cls.__module__}.{cls.__qualname__}"
    return f"{kind} '{entry.name}' ({entry.origin})"


def names(kind: str) -> list[str]:
    discover()
    return sorted(name for k, name in _entries if k == kind)


def entries() -> list[Entry]:
    discover()
    return sorted(_entries.values(), key=lambda e: (e.kind, e.name))
