"""Conditions on what the guard already knows: flags, honey accounts, breached passwords, attacks."""

from __future__ import annotations

from typing import Literal

from guard.rules.context import Context, Phase
from guard.rules.registry import NO_VALUES, CompileEnv, Condition, Values, register

FlagSubject = Literal["ip", "subnet", "account"]


class Flagged(Condition):
    kind = "flagged"
    phase = Phase.LOGIN
    needs_flags = True

    def __init__(self, subjects: frozenset[str]) -> None:
        self.subjects = subjects

    def test(self, ctx: Context) -> Values | None:
        hit = self.subjects & ctx.flags
        return {"flagged": ",".join(sorted(hit))} if hit else None


@register("flagged", FlagSubject | list[FlagSubject], "the ip, subnet or account was flagged by an earlier rule")
def _flagged(args: str | list[str], env: CompileEnv) -> Condition:
    return Flagged(frozenset([args] if isinstance(args, str) else args))


class _Bool(Condition):
    phase = Phase.LOGIN

    def __init__(self, want: bool) -> None:
        self.want = want

    def value(self, ctx: Context) -> bool:
        raise NotImplementedError

    def test(self, ctx: Context) -> Values | None:
        return NO_VALUES if self.value(ctx) == self.want else None


class Honey(_Bool):
    kind = "honey_account"

    def value(self, ctx: Context) -> bool:
        return ctx.honey


@register("honey_account", bool, "the username is one of the configured decoy accounts")
def _honey(args: bool, env: CompileEnv) -> Condition:
    return Honey(args)


class Breached(_Bool):
    kind = "breached_password"

    def __init__(self, want: bool, available: bool) -> None:
        super().__init__(want)
        self.available = available

    def value(self, ctx: Context) -> bool:
        return ctx.password_breached

    def impossible(self) -> str | None:
        if self.want and not self.available:
            return "no breached-password list is configured (breached_passwords)"
        return None


@register("breached_password", bool, "the password is on the local breached-password list")
def _breached(args: bool, env: CompileEnv) -> Condition:
    return Breached(args, env.has_breached)


class Attack(_Bool):
    kind = "attack_in_progress"
    needs_attack = True

    def value(self, ctx: Context) -> bool:
        return ctx.attack


@register("attack_in_progress", bool, "the global failure rate is spiking over its learned baseline")
def _attack(args: bool, env: CompileEnv) -> Condition:
    return Attack(args)


class Device(Condition):
    kind = "device"
    phase = Phase.LOGIN

    def __init__(self, known: bool) -> None:
        self.known = known

    def test(self, ctx: Context) -> Values | None:
        return NO_VALUES if ctx.device_known == self.known else None


@register("device", Literal["known", "new"], "the browser's device cookie is known for this account, or not")
def _device(args: str, env: CompileEnv) -> Condition:
    return Device(args == "known")


class BodyError(_Bool):
    kind = "login_body_error"

    def value(self, ctx: Context) -> bool:
        return ctx.body_error is not None


@register("login_body_error", bool, "the login body could not be read cleanly (malformed, duplicate fields)")
def _body_error(args: bool, env: CompileEnv) -> Condition:
    return BodyError(args)
