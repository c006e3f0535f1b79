"""Seeing what the guard does: metrics, the decision log, live views, the exposure ledger."""
