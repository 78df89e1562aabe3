"""The fuzz targets in the suite: a bounded number of hypothesis examples per target, plain and mutated seeds.

`./run fuzz` runs the same targets for as long as asked (tests/fuzz/fuzz.py); here each runs a few hundred
inputs so the suite stays quick. A failing example is shrunk by hypothesis and printed.
"""

from __future__ import annotations

import random

import pytest
from fuzz_targets import SEEDS, TARGETS, mutate, split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = sorted(TARGETS)


@pytest.mark.parametrize("name", NAMES)
def test_seeds_run_clean(name: str) -> None:
    """Every seed passes its target whole, byte by byte, a line at a time (as a client waiting for each reply
    sends) and at random cuts (so the targets themselves are sane)."""
    for seed in SEEDS[name]:
        TARGETS[name]([seed])
        TARGETS[name]([seed[i:i + 1] for i in range(len(seed))])
        TARGETS[name](seed.splitlines(keepends=True))
        for n in range(3):
            TARGETS[name](split(random.Random(n), seed))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), cut=st.randoms(use_true_random=False))
def test_random_bytes(name: str, data: bytes, cut: random.Random) -> None:
    TARGETS[name](split(cut, data))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32), rng=st.randoms(use_true_random=False))
def test_mutated_seeds(name: str, seed: int, rng: random.Random) -> None:
    seeds = SEEDS[name]
    data = mutate(rng, seeds[seed % len(seeds)], seeds)
    TARGETS[name](split(rng, data))
