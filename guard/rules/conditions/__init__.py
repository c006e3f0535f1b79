"""Condition kinds; importing this package registers every kind in ``guard.rules.registry``."""

from guard.rules.conditions import geo, request, state, velocity

__all__ = ["geo", "request", "state", "velocity"]
