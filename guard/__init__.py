"""loginguard: a reverse proxy that guards the login forms of legacy web services."""

__version__ = "0.1.0"
