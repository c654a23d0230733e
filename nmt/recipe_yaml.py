"""Reading a recipe file: bounded, safe YAML with errors that name the line.

Safe YAML (no Python objects), with YAML 1.2's numbers and booleans where PyYAML keeps 1.1's: ``1e-3``
is a float, ``010`` is ten (1.1: octal 8), ``1:30`` and ``1_0`` are strings (1.1: 90 and 10), and only
true/false are booleans (1.1: yes, no, on, off too, so a key ``on:`` became True); a key given twice is
an error, not "the last one wins"; aliases are few and their expansion is bounded (a 744-byte recipe
of nested aliases once took 31 s and 4 GB); nesting is at most MAX_YAML_DEPTH deep; the file is a
regular file of at most 1 MB.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nmt.errors import RecipeError, quote, shorten
from nmt.io import read_small_file

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few kilobytes; this only stops a wrong file being read whole
MAX_YAML_ALIASES = 100  # no recipe needs many; nested aliases expand exponentially ("billion laughs")
MAX_YAML_VALUES = 1_000_000  # after aliases are expanded; more than a 1 MB file can hold without them
MAX_YAML_DEPTH = 100  # sections and lists within each other; deeper ran out of Python's stack (RecursionError)


class RecipeYAMLProblem(yaml.YAMLError):
    """YAML that parses but that a recipe must not hold (too many aliases, a key given twice)."""

    def __init__(self, what: str, line: int | None = None):
        super().__init__(what)
        self.what, self.line = what, line  # line: 1-based, None for the whole file


class RecipeLoader(yaml.SafeLoader):
    """Safe YAML, except that ``1e-3`` is a float as in YAML 1.2 (PyYAML's 1.1 rules make it a string),
    a key given twice is an error (PyYAML keeps the last silently) and aliases are few."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0
        self.root: yaml.Node | None = None
        self.checked: set[int] = set()

    def compose_node(self, parent, index):
        # Counted where the alias is read, so the check costs nothing however far the aliases expand.
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise RecipeYAMLProblem(f"too many YAML aliases (more than {MAX_YAML_ALIASES}); recipes do not need them")
        if self.depth >= MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise RecipeYAMLProblem(f"YAML nested more than {MAX_YAML_DEPTH} levels deep; recipes do not need that",
                                    mark.line + 1)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        # Fewer than MAX_YAML_ALIASES aliases still nest to 9**11 values: code that walks the
        # recipe (a message, a validator) must never meet that, so the expanded size is bounded too.
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise RecipeYAMLProblem(f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values; "
                                    "recipes do not need them")
        self.root = node
        return super().construct_document(node)

    def flatten_mapping(self, node) -> None:
        # Every construct_mapping starts here; checked before merge keys (``<<``) rewrite node.value,
        # since a merged key that the mapping sets again is an override, not a duplicate.
        if id(node) not in self.checked:
            self.checked.add(id(node))
            self._refuse_duplicate_keys(node)
        super().flatten_mapping(node)

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag in ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            try:
                seen = key in first
            except TypeError:  # an unhashable key: PyYAML's own error says so
                continue
            if seen:
                place = _node_path(self.root, node)
                where = f" in {shorten(place)}" if place else ""
                raise RecipeYAMLProblem(f"duplicate key {quote(key)}{where} (first on line {first[key]})", line)
            first[key] = line


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded_size(root) -> int:
    """How many values the document holds once every alias is expanded, counted per distinct node."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise RecipeYAMLProblem("a YAML alias inside its own anchor (a recursive value)",
                                        child.start_mark.line + 1)
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _node_path(root, target) -> str | None:
    """The dotted key path from ``root`` to the node ``target`` ('' for the root), for messages."""
    stack, seen = [(root, "")], set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, f"{path}.{k.value}" if path else str(k.value)) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node.value))
    return None


INT, BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool"
# YAML 1.2's core schema for integers and booleans, in place of PyYAML's 1.1 resolvers
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (INT, BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))
RecipeLoader.add_implicit_resolver(INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
RecipeLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_int(loader: RecipeLoader, node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)  # "010" is ten


RecipeLoader.add_constructor(INT, _construct_int)

def read_recipe_file(path: Path) -> dict:
    """The mapping in a recipe file (a user's or a run directory's), or :class:`RecipeError` naming the line."""
    text = read_small_file(path, MAX_RECIPE_BYTES, RecipeError, "recipe file")
    try:
        raw = yaml.load(text, Loader=RecipeLoader)
    except RecipeYAMLProblem as exc:
        raise RecipeError(f"{path}:{exc.line}" if exc.line else path, exc.what) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(where, f"invalid YAML: {shorten(problem)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(path, f"expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw
