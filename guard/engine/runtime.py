"""Everything a config compiles into at load: rules, lists, GeoIP, honey accounts.

A reload builds a complete new ``Runtime`` off to the side and the engine swaps
one reference, so a request sees either the old set or the new one, never a mix,
and a bad file never replaces a good one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.config import Config
from guard.engine.logins import LoginMatcher
from guard.rules.evaluate import Scoring
from guard.rules.loader import load_rules, rule_paths
from guard.rules.model import RuleSet
from guard.rules.registry import CompileEnv
from guard.yamlsource import Problem, SourceError

log = logging.getLogger("guard.runtime")


@dataclass(slots=True)
class Runtime:
    config: Config
    rules: RuleSet
    logins: LoginMatcher
    scoring: Scoring
    lists: Any                      # guard.iplists.NamedLists
    geo: Any = None                 # guard.geo.GeoDB | None
    hosting: frozenset[int] = frozenset()
    breached: Any = None            # guard.breached.BreachedPasswords | None
    normalizer: Any = None          # guard.engine.usernames.Normalizer
    honey_names: frozenset[str] = frozenset()
    sources: dict[str, Any] = field(default_factory=dict)   # list name -> guard.listfetch.ListSource

    def close(self) -> None:
        if self.breached is not None:
            self.breached.close()
        if self.geo is not None and hasattr(self.geo, "close"):
            self.geo.close()


def _load_lists(config: Config) -> tuple[Any, dict[str, Any], list[Problem]]:
    sources: dict[str, Any] = {}
    problems: list[Problem] = []
    if not config.ip_lists:
        return {}, sources, problems
    from guard.iplists import IPSet, NamedLists, parse_file
    from guard.listfetch import ListSource

    lists = NamedLists()
    for name, spec in config.ip_lists.items():
        sources[name] = ListSource(name=name, path=spec.file, url=spec.url, refresh=spec.refresh,
                                   max_bytes=spec.max_bytes)
        if spec.file is not None:
            ipset, bad = parse_file(spec.file)
            for p in bad[:20]:
                problems.append(Problem(str(spec.file), p.line, 1, f"ip_lists.{name}", p.message))
            lists.set(name, ipset)
        else:
            lists.set(name, IPSet.from_iterable([]))
    return lists, sources, problems


def build_runtime(config: Config, strict_lists: bool = False) -> Runtime:
    """Compile everything; raise ``SourceError`` naming every problem.  Blocking: call off the event loop."""
    problems: list[Problem] = []
    lists, sources, list_problems = _load_lists(config)
    if strict_lists:
        problems.extend(list_problems)
    else:
        for p in list_problems:
            log.warning("ignored bad line in IP list: %s", p)
    geo = None
    hosting: frozenset[int] = frozenset()
    g = config.geoip
    if g.enabled:
        from guard.geo import GeoDB, GeoSources

        geo = GeoDB(GeoSources(city=g.city, country=g.country, asn=g.asn))
    if g.hosting_asns is not None:
        from guard.geo import HostingASNs

        hosting = frozenset(HostingASNs.load(g.hosting_asns))
    breached = None
    if config.breached_passwords is not None:
        from guard.breached import BreachedPasswords

        breached = BreachedPasswords(config.breached_passwords)
    normalizer = None
    if config.logins:
        from guard.engine.usernames import Normalizer, load_aliases

        aliases = None
        if config.usernames.aliases is not None:
            try:
                aliases = load_aliases(config.usernames.aliases)
            except (OSError, ValueError) as exc:
                line = getattr(exc, "line", 0)
                problems.append(Problem(str(config.usernames.aliases), line, 1, "usernames.aliases", str(exc)))
        normalizer = Normalizer(config.usernames, aliases)
    env = CompileEnv(
        list_names=frozenset(config.ip_lists), lists=lists, hosting_asns=hosting,
        has_geo=geo is not None, has_breached=breached is not None,
    )
    rules = RuleSet()
    try:
        rules = load_rules(config.rules, env)
    except SourceError as exc:
        problems.extend(exc.problems)
    if problems:
        if breached is not None:
            breached.close()
        raise SourceError(problems)
    s = config.scoring
    return Runtime(
        config=config,
        rules=rules,
        logins=LoginMatcher(config.logins),
        scoring=Scoring(log=s.log, challenge=s.challenge, block=s.block),
        lists=lists,
        geo=geo,
        hosting=hosting,
        breached=breached,
        normalizer=normalizer,
        honey_names=frozenset(normalizer.normalize(u) for u in config.honey_accounts) if normalizer else frozenset(),
        sources=sources,
    )


def watched_files(config: Config, config_path: Path | None) -> list[Path]:
    """Files whose change triggers a hot reload."""
    out = [config_path] if config_path is not None else []
    out.extend(rule_paths(config.rules))
    out.extend(p for p in config.rules if p.is_dir())
    return out
