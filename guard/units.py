"""Durations, byte sizes and listen addresses as config authors write them.

Operators write ``30s``, ``5m``, ``1MiB`` and ``[::1]:8080``; the rest of the code
wants seconds, bytes and a (host, port) pair.  Parsing happens once at load.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
    "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s or 5m (got {value!r})")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f'expected a duration such as 250ms, 30s, 5m, 2h or 7d (got "{value}")')
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s or 5m (got {type(value).__name__})")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative (got {value!r})")
    return seconds


def parse_size(value: Any) -> int:
    """``"64KiB"``, ``"1MiB"``, ``"10MB"`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 64KiB or 1MiB (got {value!r})")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f'expected a size such as 8KiB, 1MiB or 10MB (got "{value}")')
        unit = m.group(2).lower() if m.group(2) else None
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(f"expected a size such as 64KiB or 1MiB (got {type(value).__name__})")
    if size < 0:
        raise ValueError(f"a size cannot be negative (got {value!r})")
    return size


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_hostport(value: Any) -> HostPort:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``":8080"`` (all IPv4 interfaces) or a port number."""
    if isinstance(value, HostPort):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "0.0.0.0", str(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or not text[end + 1 :].startswith(":"):
                raise ValueError(f'expected host:port such as [::1]:8080 (got "{value}")')
            host, port_text = text[1:end], text[end + 2 :]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f'expected host:port such as 127.0.0.1:8080 or [::1]:8080 (got "{value}")')
            host = host or "0.0.0.0"
    else:
        raise ValueError(f"expected host:port (got {type(value).__name__})")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'port must be a number from 0 to 65535 (got "{port_text}")')
    return HostPort(host, int(port_text))


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda v: f"{v:g}s", return_type=str),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d|w)?$"}, {"type": "number"}],
                    "description": "a duration: 250ms, 30s, 5m, 2h, 7d, or seconds"}),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}],
                    "description": "a size: 8KiB, 1MiB, 10MB, or bytes"}),
]
ListenAddress = Annotated[
    HostPort,
    BeforeValidator(parse_hostport),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "host:port, [v6addr]:port or :port"}),
]
