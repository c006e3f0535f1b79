"""YAML loading that remembers where every value came from.

PyYAML's safe loader throws positions away once it builds Python objects, and
pydantic reports errors by key path only.  Config and rule authors need
``file:line:col: key.path: message``, so we compose the node graph ourselves,
record the position of every mapping key and sequence item, and translate a
pydantic ``loc`` back to a line afterwards.  No library does this for plain
PyYAML (ruamel.yaml keeps positions but would be a second YAML stack).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class Problem:
    """One error found in a source file, printable as ``file:line:col: key: message``."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SourceError(Exception):
    """A config or rule file could not be loaded; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(slots=True)
class Located:
    """A parsed YAML document plus the position (line, column; 1-based) of every key path."""

    file: str
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Iterable[str | int]) -> tuple[int, int]:
        """Position of the deepest prefix of ``loc`` that exists in the document."""
        path = tuple(loc)
        while path:
            pos = self.positions.get(path)
            if pos is not None:
                return pos
            path = path[:-1]
        return self.positions.get((), (1, 1))

    def problem(self, loc: Iterable[str | int], message: str) -> Problem:
        path = tuple(loc)
        line, col = self.where(path)
        return Problem(self.file, line, col, format_loc(path), message)


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.positions: dict[Loc, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.loader = yaml.SafeLoader("")
        self.seen: set[int] = set()

    def build(self, node: yaml.Node, path: Loc) -> Any:
        mark = node.start_mark
        if not isinstance(node, yaml.ScalarNode):
            # PyYAML hands an alias (*x) back as the very node it names: seeing a collection
            # twice means an alias.  Refused, like merge keys: a few hundred bytes of nested
            # aliases ("billion laughs") would otherwise expand into gigabytes.
            if id(node) in self.seen:
                self._fail(node, path, "YAML aliases (*name) are not supported: write the value out")
                return None
            self.seen.add(id(node))
        self.positions.setdefault(path, (mark.line + 1, mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                if isinstance(key, (dict, list)) or key is None:
                    self._fail(key_node, path, "mapping keys must be plain scalars")
                    continue
                if key == "<<":
                    self._fail(key_node, path, "YAML merge keys (<<) are not supported")
                    continue
                if key in out:
                    self._fail(key_node, (*path, key), "duplicate key")
                    continue
                kmark = key_node.start_mark
                self.positions[(*path, key)] = (kmark.line + 1, kmark.column + 1)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.build(node, ())
        typed = self.loader.construct_object(node, deep=True)
        if isinstance(typed, str) and "${" in typed:
            typed = self._interpolate(typed, node)
        return typed

    def _interpolate(self, text: str, node: yaml.Node) -> str:
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if value is None:
                if default is not None:
                    return default
                self._fail(node, (), f"environment variable {name} is not set")
                return ""
            return value

        return _ENV_REF.sub(sub, text)

    def _fail(self, node: yaml.Node, path: Loc, message: str) -> None:
        m = node.start_mark
        self.problems.append(Problem(self.file, m.line + 1, m.column + 1, format_loc(path), message))


def load_text(text: str, file: str = "<string>", env: Mapping[str, str] | None = None) -> Located:
    """Parse one YAML document; ``${VAR}`` and ``${VAR:-default}`` in strings come from ``env``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        msg = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SourceError([Problem(file, line, col, "", f"YAML syntax: {msg}")]) from None
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, 0, 0, "", f"YAML syntax: {exc}")]) from None
    except RecursionError:
        raise SourceError([Problem(file, 0, 0, "", "YAML nests too deeply")]) from None
    if root is None:
        return Located(file, {}, {(): (1, 1)})
    builder = _Builder(file, os.environ if env is None else env)
    try:
        data = builder.build(root, ())
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, 0, 0, "", f"YAML: {exc}")]) from None
    except RecursionError:
        raise SourceError([Problem(file, 0, 0, "", "YAML nests too deeply")]) from None
    if builder.problems:
        raise SourceError(builder.problems)
    return Located(file, data, builder.positions)


def load_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Located:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError([Problem(str(p), 0, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([Problem(str(p), 0, 0, "", f"cannot read: {exc}")]) from None
    return load_text(text, str(p), env)


def _describe_input(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def problems_from_validation(doc: Located, exc: ValidationError, base: Loc = ()) -> list[Problem]:
    """Turn pydantic errors into located problems with a readable message."""
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in (*base, *err["loc"]) if not _is_union_tag(p))
        etype = err["type"]
        msg = err["msg"]
        if etype == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif etype == "missing":
            msg = "required key is missing"
        elif "input" in err and etype not in ("value_error",) and not _sensitive(loc):
            msg = f"{msg} (got {_describe_input(err['input'])})"
        elif etype == "value_error":
            msg = msg.removeprefix("Value error, ")
        out.append(doc.problem(loc, msg))
    return out


# Values under these keys are secrets (or URLs that may carry one): an error names the key, never the value.
_SENSITIVE = frozenset({"secret_key", "token", "password", "secret", "keys", "url", "lookup_token", "webhook"})


def _sensitive(loc: Loc) -> bool:
    return any(isinstance(p, str) and p in _SENSITIVE for p in loc)


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the union member's name ("function-after[...]", "str") into loc
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})
