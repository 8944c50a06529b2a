"""Fixtures for data tests: a private dataset cache per test, and small data files written on the spot."""

from __future__ import annotations

import pytest

from tuneforge.config import RunConfig


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own TUNEFORGE_HOME, so cache hits and misses are the test's own."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNEFORGE_HOME", str(home))
    return home / "datasets"


@pytest.fixture()
def config():
    def make(**overrides) -> RunConfig:
        packing = overrides.pop("packing", None)
        made = RunConfig(**{"cutoff_len": 64, "overlap_len": 8, **overrides})
        if packing is not None:  # not a RunConfig key yet: data preparation reads it with getattr
            made.packing = packing
        return made

    return make
