"""YAML loading that remembers where every value came from.

Marketers' files are validated by pydantic, whose errors carry a path (`("schedule", "cron")`)
but no line.  `load_yaml` returns the data together with a `LineMap` so that any error can be
reported as `campaigns/x.yaml:12: schedule.cron: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from orchestrator.errors import InputError

Loc = tuple[str | int, ...]


@dataclass
class LineMap:
    """Line numbers (1-based) of every mapping key and sequence item, by path."""

    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Iterable[str | int]) -> int | None:
        """The line of `loc`, or of its closest ancestor that has one."""
        path = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


class _Loader(yaml.SafeLoader):
    """Safe loader that keeps dates as strings: the models decide how to parse them."""


# Keep ISO dates/times as text so that pydantic sees exactly what the marketer wrote.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# Aliases let a few lines stand for an exponential number of values ("billion laughs") or for a
# value that contains itself; nesting can exhaust the stack.  All three are refused.
MAX_VALUES = 100_000
MAX_DEPTH = 100


def _construct(node: yaml.Node, loader: _Loader) -> Any:
    """A scalar (or key) value; a value the tag cannot hold (`!!timestamp 2020-13-45`, an int of
    5000 digits) is an error at its line, not a traceback."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, TypeError, OverflowError) as error:
        raise InputError(f"not valid YAML: {error}", line=node.start_mark.line + 1) from None


def _walk(node: yaml.Node, loader: _Loader, loc: Loc, lines: dict[Loc, int],
          budget: list[int] | None = None, stack: tuple[int, ...] = ()) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    budget = budget if budget is not None else [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise InputError(f"more than {MAX_VALUES} values (aliases expanding too far?)",
                         line=node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in stack:
            raise InputError("an alias refers to a value that contains it",
                             line=node.start_mark.line + 1)
        if len(stack) >= MAX_DEPTH:
            raise InputError(f"nested more than {MAX_DEPTH} levels deep", line=node.start_mark.line + 1)
        stack = stack + (id(node),)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, loader)
            if not isinstance(key, (str, int, float, bool)):
                raise InputError(
                    "a key must be a plain word", line=key_node.start_mark.line + 1
                )
            if key in out:
                raise InputError(
                    f"'{key}' is given twice", line=key_node.start_mark.line + 1, field=str(key)
                )
            key = str(key) if not isinstance(key, bool) else key
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, loader, loc + (key,), lines, budget, stack)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            items.append(_walk(item, loader, loc + (index,), lines, budget, stack))
        return items
    return _construct(node, loader)


def parse_yaml(text: str, *, file: str | Path) -> tuple[Any, LineMap]:
    """Parse YAML text; syntax errors become one InputError naming file and line."""
    lines: dict[Loc, int] = {}
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as error:  # control characters (NUL, ...) are refused at once
        line = text.count("\n", 0, error.position) + 1
        raise InputError(f"not valid YAML: character #x{error.character:04x} is not allowed",
                         file=file, line=line) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, LineMap(lines)
        data = _walk(node, loader, (), lines)
    except InputError as error:
        error.file = str(file)
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = error.problem or error.context or "not valid YAML"
        raise InputError(f"not valid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as error:
        raise InputError(f"not valid YAML: {error}", file=file) from None
    except RecursionError:
        raise InputError("not valid YAML: nested too deeply", file=file) from None
    finally:
        loader.dispose()
    return data, LineMap(lines)


def load_yaml(path: Path) -> tuple[Any, LineMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("the file is not UTF-8 text", file=path) from None
    except OSError as error:
        raise InputError(f"cannot read the file: {error.strerror}", file=path) from None
    return parse_yaml(text, file=path)


def pydantic_error(error: Any, *, file: str | Path, lines: LineMap, kind: type[InputError] = InputError) -> InputError:
    """Turn the first pydantic ValidationError entry into one marketer-readable error."""
    first = error.errors()[0]
    loc = tuple(part for part in first["loc"] if not (isinstance(part, str) and part.startswith("function-")))
    field_name = ".".join(str(part) for part in loc) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "this field is required"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return kind(message, file=file, line=lines.line(loc), field=field_name)
