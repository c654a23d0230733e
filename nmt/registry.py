"""The plugin registry: kinds, names, entry-point discovery and explicit local plugins.

A plugin is a class decorated with ``@nmt.register(kind, name)``. Built-in and third-party plugins
are found the same way, through modules named in the ``nmt.plugins`` entry-point group; local code
is imported only when the user names it (``--plugin`` or a recipe's ``plugins:`` list).
"""
from __future__ import annotations

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
from pathlib import Path

from nmt.errors import PluginError, quote

ENTRY_POINT_GROUP = "nmt.plugins"
KINDS = ("encoder", "decoder", "attention", "task", "tokenizer")  # what the core knows how to build


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


_entries: dict[tuple[str, str], Entry] = {}
_loading_origin: list[str] = []  # origin of the module being imported, innermost last
_discovered = False


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
    if not isinstance(name, str) or not name.strip():
        raise PluginError(where, "the name must be a non-empty string")

    def decorate(cls: type) -> type:
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
            what = getattr(cls, "__qualname__", repr(cls))
            raise PluginError(where, f"{what} does not meet the {kind} contract (nmt.contracts): {problem}")
        _entries[key] = Entry(kind, name, cls, origin)
        cls.registered_name = name
        return cls

    return decorate


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
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
        _loading_origin.append(origin)
        try:
            importlib.import_module(ep.value.split(":")[0])
        except PluginError:
            raise
        except Exception as exc:  # a broken third-party plugin must not take the whole CLI down
            raise PluginError(f"entry point '{ep.name}' ({origin})", f"cannot import {ep.value}: {exc}") from exc
        finally:
            _loading_origin.pop()


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
        path = plugin_file(spec, path)
        module_name = f"nmt_local_plugin_{abs(hash(str(path.resolve())))}"
        if module_name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        _loading_origin.append(str(path))
        try:
            module_spec.loader.exec_module(module)
        except PluginError:
            del sys.modules[module_name]
            raise
        except (Exception, SystemExit) as exc:  # sys.exit() in a plugin would end nmt without a word
            del sys.modules[module_name]
            raise PluginError(str(path), f"cannot load plugin: {type(exc).__name__}: {exc}") from exc
        finally:
            _loading_origin.pop()
        return
    _loading_origin.append(spec)
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise PluginError(spec, f"plugin module not found ({exc})") from exc
        raise PluginError(spec, f"cannot load plugin: {type(exc).__name__}: {exc}") from exc
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:  # as for a file: a broken plugin is the user's to fix, not a crash
        raise PluginError(spec, f"cannot load plugin: {type(exc).__name__}: {exc}") from exc
    finally:
        _loading_origin.pop()


def get(kind: str, name: str, where: str | None = None) -> type:
    """Return the class registered as ``name`` of ``kind``; a typo gets a close-match suggestion."""
    discover()
    entry = _entries.get((kind, name))
    if entry is not None:
        return entry.cls
    known = names(kind)
    close = difflib.get_close_matches(str(name)[:100], known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known) or 'none'}"
    raise PluginError(where, f"unknown {kind} {quote(name)}{hint}")


def names(kind: str) -> list[str]:
    discover()
    return sorted(name for k, name in _entries if k == kind)


def entries() -> list[Entry]:
    discover()
    return sorted(_entries.values(), key=lambda e: (e.kind, e.name))
