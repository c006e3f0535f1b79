"""The condition registry: a rule condition kind is one class and one line here.

Each kind declares the pydantic type of its YAML arguments (validated with
file:line errors), the phase it needs, what state it reads, and a pure
``test``.  The compiler looks kinds up by their YAML key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import TypeAdapter

from guard.rules.context import Context, CounterSpec, Phase

# What a condition returns when it holds: the values that made it hold (for the decision log).
Values = Mapping[str, float | int | str]
NO_VALUES: Values = {}


@dataclass(slots=True)
class CompileEnv:
    """What conditions may resolve at compile time: named lists, hosting ASNs, honey accounts."""

    list_names: frozenset[str] = frozenset()
    lists: Any = None                        # guard.iplists.NamedLists (or a plain dict) at run time
    hosting_asns: frozenset[int] = frozenset()
    has_geo: bool = False
    has_breached: bool = False
    warnings: list[tuple[tuple[str | int, ...], str]] = field(default_factory=list)


class Condition:
    """Base class of compiled conditions.  Subclasses set ``kind`` and implement ``test``."""

    kind: ClassVar[str] = ""
    phase: ClassVar[Phase] = Phase.REQUEST
    needs_account: ClassVar[bool] = False
    needs_flags: ClassVar[bool] = False
    needs_attack: ClassVar[bool] = False
    needs_geo: ClassVar[bool] = False

    def counters(self) -> tuple[CounterSpec, ...]:
        return ()

    def test(self, ctx: Context) -> Values | None:
        raise NotImplementedError

    def impossible(self) -> str | None:
        """Why this condition can never hold (for ``guard check``), or None."""
        return None


Builder = Callable[[Any, CompileEnv], Condition]


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    args: TypeAdapter[Any]
    build: Builder
    doc: str


REGISTRY: dict[str, Kind] = {}


def register(name: str, args: Any, doc: str) -> Callable[[Builder], Builder]:
    def deco(build: Builder) -> Builder:
        if name in REGISTRY:
            raise RuntimeError(f"condition {name!r} registered twice")
        REGISTRY[name] = Kind(name, TypeAdapter(args), build, doc)
        return build

    return deco
