"""The incident, replayed over HTTP against a legacy app behind the guard with the shipped packs."""

from __future__ import annotations

import pytest

from guard.demo.simulate import Scenario, check, run


@pytest.mark.slow
async def test_shipped_packs_meet_the_targets() -> None:
    summary = await run(Scenario(seed=2021))
    assert summary["valid_pairs_tried"]["botnet"] > 800
    assert summary["attack_attempts"]["fast"] >= 300
    failed = [(text, value) for text, ok, value in check(summary) if not ok]
    assert not failed, (failed, summary)
