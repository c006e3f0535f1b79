"""The OpenAPI 3.1 document of the admin API, written by hand next to the routes it describes.

Hand-written because the routes are few and plain, and a generator would be a
dependency for a page of JSON.  A test checks that every route the admin app
serves is documented here and that the document validates.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _q(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_ACTION = {"type": "string",
           "enum": ["pass", "allow", "log", "block", "ban", "tarpit", "challenge", "unavailable"]}
_BY = {"type": "string", "enum": ["ip", "subnet", "asn", "country", "username"], "default": "ip"}
_LOGIN = {"name": "login", "in": "path", "required": True, "schema": {**_STR, "minLength": 1, "maxLength": 320},
          "description": "the login id as users type it, URL-encoded (alice%40example.com); normalised and "
                         "hashed like a login, never stored or logged in clear"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _STR, "problems": {"type": "array", "items": _STR}}, ("error",)),
    "Ban": _obj({"subject": _STR, "until": _NUM, "remaining": _NUM, "reason": _STR, "created": _NUM},
                ("subject", "until", "reason")),
    "BanRequest": {
        **_obj({"subject": {"type": "string", "description": "ip:1.2.3.4, net:1.2.3.0/24, or a bare IP/CIDR"},
                "seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 315360000},
                "reason": {"type": "string", "maxLength": 200, "default": "manual"}}, ("subject", "seconds")),
        "additionalProperties": False,
    },
    "Decision": _obj({
        "ts": _NUM, "ip": _STR, "method": _STR, "path": _STR, "status": _INT, "action": _ACTION,
        "rules": {"type": "array", "items": _STR}, "shadow": _BOOL, "login": _STR, "outcome": _STR,
        "country": _STR, "asn": _INT, "score": _NUM,
        "user": {"type": "string", "description": "keyed hash prefix"},
    }, ("ts", "ip", "action", "rules")),
    "TopEntry": _obj({"key": _STR, "count": _INT, "name": _STR}, ("key", "count")),
    "TotpSecret": {
        **_obj({"secret": {"type": "string", "minLength": 16, "maxLength": 256,
                           "description": "base32, as authenticator apps show it (spaces and padding optional)"}},
               ("secret",)),
        "additionalProperties": False,
    },
    "Rule": _obj({
        "id": _STR, "description": _STR, "action": _STR, "phase": _STR, "file": _STR, "line": _INT,
        "score": _NUM, "shadow": _BOOL, "hits": _obj({"enforce": _INT, "shadow": _INT}),
    }, ("id", "hits")),
    "Health": _obj({
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "store": {"type": "string", "enum": ["up", "down"]},
        "attack": _BOOL, "bans_cached": _INT, "rules": _INT, "workers": _INT, "multiprocess": _BOOL,
        "decision_log_dropped": _INT, "ledger_dropped": _INT, "uptime_s": _NUM,
    }, ("status", "store", "attack")),
    "ExposureSummary": _obj({
        "accounts": _INT, "seen": _INT, "withheld": _INT, "last": {"type": ["number", "null"]},
        "countries": {"type": "array", "items": _obj({"code": _STR, "name": _STR, "accounts": _INT})},
    }, ("accounts", "seen", "withheld")),
    "Summary": _obj({
        "ts": _NUM, "attack": {"type": "object"}, "totals": {"type": "object", "additionalProperties": _INT},
        "series": _obj({"start": _INT, "step": _INT, "counts": {
            "type": "object", "additionalProperties": {"type": "array", "items": _INT}}}),
        "top": {"type": "object", "additionalProperties": {"type": "array", "items": _ref("TopEntry")}},
        "rules": {"type": "array", "items": _ref("Rule")},
        "bans": {"type": "array", "items": _ref("Ban")}, "bans_total": _INT,
        "recent": {"type": "array", "items": _ref("Decision")},
        "exposures": _ref("ExposureSummary"), "workers": _INT,
    }, ("ts", "totals", "series", "top", "bans")),
}


def document(version: str = "0") -> dict[str, Any]:
    """The whole OpenAPI document (a fresh dict: callers may add to it)."""
    bans_list = _ok("Active bans", _obj({"bans": {"type": "array", "items": _ref("Ban")}}, ("bans",)))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "loginguard admin API", "version": version,
            "description": "Bans, decisions, top talkers, rules, reload, health, metrics, the live "
                           "dashboard, forced resets and TOTP enrolments. Every route needs "
                           "`Authorization: Bearer <admin.token>` except "
                           "/healthz and /readyz.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": _ok("Serving", _obj({"status": _STR}))}}},
            "/readyz": {"get": {"summary": "Readiness (store reachable, not draining)", "security": [],
                                "responses": {"200": _ok("Ready", _obj({"status": _STR})),
                                              "503": _ok("Not ready", _obj({"status": _STR}))}}},
            "/metrics": {"get": _op("Prometheus metrics (merged over workers)",
                                    {"200": _ok("Exposition text", _STR, "text/plain")})},
            "/api/resets": {
                "post": _op("Put accounts on (or off) the forced-reset list", {
                    "200": _ok("Done", _obj({"accounts": {"type": "integer"}}, ("accounts",))),
                    "400": _ok("Bad request", _ref("Error")),
                    "409": _ok("forced_reset_url is not configured", _ref("Error")),
                }, requestBody={"required": True, "content": {JSON: {"schema": _obj(
                    {"logins": {"type": "array", "items": {"type": "string"}}, "on": {"type": "boolean"}},
                    ("logins",),
                )}}}),
            },
            "/api/totp/{login}": {
                "put": _op("Enrol an account's authenticator app (import its TOTP secret; replaces one)", {
                    "200": _ok("Enrolled (sealed in the store)", _obj({"enrolled": _BOOL}, ("enrolled",))),
                    "400": _ok("Bad login id or secret (the error never repeats the secret)", _ref("Error")),
                    "409": _ok("TOTP is not configured", _ref("Error")),
                    "503": _ok("The store is unavailable", _ref("Error")),
                }, parameters=[_LOGIN], requestBody={"required": True,
                                                     "content": {JSON: {"schema": _ref("TotpSecret")}}}),
                "delete": _op("Remove an account's authenticator app", {
                    "200": _ok("Done", _obj({"removed": _BOOL}, ("removed",))),
                    "400": _ok("Bad login id", _ref("Error")),
                    "409": _ok("TOTP is not configured", _ref("Error")),
                    "503": _ok("The store is unavailable", _ref("Error")),
                }, parameters=[_LOGIN]),
            },
            "/api/bans": {
                "get": _op("List active bans", {"200": bans_list}),
                "post": _op("Ban a subject", {
                    "201": _ok("Banned", _obj({"ban": _ref("Ban")}, ("ban",))),
                    "400": _ok("Bad request", _ref("Error")),
                }, requestBody={"required": True, "content": {JSON: {"schema": _ref("BanRequest")}}}),
            },
            "/api/bans/{subject}": {
                "delete": _op("Remove a ban and the counters behind it", {
                    "200": _ok("Done", _obj({"subject": _STR, "removed": _BOOL}, ("removed",))),
                    "400": _ok("Bad subject", _ref("Error")),
                }, parameters=[{"name": "subject", "in": "path", "required": True,
                                "description": "URL-encoded, e.g. ip%3A203.0.113.7", "schema": _STR}]),
            },
            "/api/decisions": {"get": _op("Recent decisions, newest first", {
                "200": _ok("Decisions", _obj({"decisions": {"type": "array", "items": _ref("Decision")}})),
            }, parameters=[
                _q("action", "only this action", _ACTION), _q("ip", "only this client IP", _STR),
                _q("rule", "only decisions this rule contributed to", _STR),
                _q("limit", "at most this many (1..1000)",
                   {"type": "integer", "minimum": 1, "maximum": 1000}),
            ])},
            "/api/top": {"get": _op("Top talkers among blocked requests and failed logins", {
                "200": _ok("Top", _obj({"by": _STR, "top": {"type": "array", "items": _ref("TopEntry")}})),
                "400": _ok("Bad dimension", _ref("Error")),
            }, parameters=[_q("by", "dimension", _BY),
                           _q("limit", "rows (1..500)", {"type": "integer", "minimum": 1, "maximum": 500})])},
            "/api/rules": {"get": _op("Loaded rules with hit counts", {
                "200": _ok("Rules", _obj({"rules": {"type": "array", "items": _ref("Rule")}})),
            })},
            "/api/reload": {"post": _op("Reload config and rules (the old set stays on errors)", {
                "200": _ok("Reloaded", _obj({"status": _STR})),
                "422": _ok("Rejected: problems in the files", _ref("Error")),
            })},
            "/api/health": {"get": _op("Detailed health", {"200": _ok("Health", _ref("Health"))})},
            "/api/summary": {"get": _op("Everything the dashboard shows, once (polling)",
                                        {"200": _ok("Summary", _ref("Summary"))})},
            "/api/exposures": {"get": _op("Exposure ledger summary (no login ids)", {
                "200": _ok("Summary", _ref("ExposureSummary")),
            }, parameters=[_q("since", "epoch seconds", _NUM)])},
            "/api/stream": {"get": _op("Server-sent events: a `summary` event every refresh interval", {
                "200": _ok("Event stream of Summary objects", _STR, "text/event-stream"),
                "503": _ok("Too many open streams", _ref("Error")),
            })},
            "/api/openapi.json": {"get": _op("This document",
                                             {"200": _ok("OpenAPI 3.1", {"type": "object"})})},
            "/dashboard": {"get": _op("The live block dashboard (HTML); without a token, a token form", {
                "200": _ok("Page", _STR, "text/html"),
            })},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "admin.token or GUARD_ADMIN_TOKEN"}},
            "responses": {
                "Unauthorized": _ok("No bearer token", _ref("Error")),
                "Forbidden": _ok("Wrong token, or the admin API is disabled (no token configured)",
                                 _ref("Error")),
            },
            "schemas": SCHEMAS,
        },
    }
