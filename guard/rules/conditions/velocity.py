"""Velocity over sliding windows, keyed by who or where the attempts come from.

The credential-stuffing signature is not many attempts (a botnet keeps each IP
slow) but many *distinct usernames* per source, and many distinct sources per
username; password spraying is many usernames per password fingerprint.  One
``velocity`` condition names a key, a metric and a window; every rule that names
the same triple shares one counter.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from guard.rules.context import Context, CounterSpec, Phase
from guard.rules.registry import CompileEnv, Condition, Values, register
from guard.units import Duration

Key = Literal["ip", "subnet", "asn", "country", "username", "device", "password", "global"]
Metric = Literal["attempts", "failures", "successes", "distinct_usernames", "distinct_ips", "failure_ratio"]

# distinct_usernames per username is always 1, distinct_ips per ip likewise: refuse them.
_POINTLESS = {("username", "distinct_usernames"), ("ip", "distinct_ips")}


class VelocityArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Key
    metric: Metric
    window: Duration = Field(gt=0)
    over: float = Field(ge=0, description="fires when the value is above this (a ratio for failure_ratio)")
    min_attempts: int = Field(10, ge=1, description="failure_ratio: only judge after this many outcomes")

    @model_validator(mode="after")
    def _sane(self) -> VelocityArgs:
        if (self.key, self.metric) in _POINTLESS:
            raise ValueError(f"{self.metric} keyed by {self.key} is always 1; choose another key")
        if self.metric == "failure_ratio" and self.over >= 1:
            raise ValueError("failure_ratio is between 0 and 1; over must be below 1")
        if self.window > 86400 * 31:
            raise ValueError("windows longer than 31 days are not supported")
        return self


class Velocity(Condition):
    kind = "velocity"
    phase = Phase.LOGIN

    def __init__(self, args: VelocityArgs) -> None:
        self.args = args
        metric, key, w = args.metric, args.key, args.window
        if metric == "failure_ratio":
            self.fail = CounterSpec(key, "failures", w)
            self.succ = CounterSpec(key, "successes", w)
            self._specs: tuple[CounterSpec, ...] = (self.fail, self.succ)
        else:
            self.spec = CounterSpec(key, metric, w)
            self._specs = (self.spec,)
        self.label = f"{key}.{metric}.{w:g}s"

    def counters(self) -> tuple[CounterSpec, ...]:
        return self._specs

    def test(self, ctx: Context) -> Values | None:
        a = self.args
        if a.metric == "failure_ratio":
            f = ctx.counters.get(self.fail, 0.0)
            s = ctx.counters.get(self.succ, 0.0)
            total = f + s
            if total < a.min_attempts:
                return None
            ratio = f / total
            return {self.label: round(ratio, 3), "outcomes": int(total)} if ratio > a.over else None
        value = ctx.counters.get(self.spec)
        if value is None or value <= a.over:
            return None
        return {self.label: value}


@register("velocity", VelocityArgs, "a sliding-window counter above a threshold: {key, metric, window, over}")
def _velocity(args: VelocityArgs, env: CompileEnv) -> Condition:
    return Velocity(args)
