"""The arm-assignment hash: frozen test vectors and the properties the experiment relies on."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from ftp_assets.domain.routing import assign_arm, bucket, route

# Computed once and checked by hand against `printf '%s' KEY | sha256sum` (first 16 hex digits,
# shifted right by 11). The agent reimplements this hash: these values must never change.
# Each row: experiment id, unit id, bucket * 2**53 (an exact integer), arm at the 10% share an
# experiment starts with, and at the 50% it ramps to.
FROZEN_VECTORS = [
    ("threads-hook-0001", 7, 732527410480875, "challenger", "challenger"),
    ("threads-hook-0001", 38, 100067536861924, "challenger", "challenger"),
    ("exp-hook-2025-01", 1, 4603703152593341, "champion", "champion"),  # bucket 0.5111
    ("exp-hook-2025-01", "post-42", 4728962767754790, "champion", "champion"),
    ("exp-body-7", 123456789, 6241931706659731, "champion", "champion"),
    ("", 0, 911574212433210, "champion", "challenger"),  # bucket 0.1012: just above the 10% share
    ("émoji-🚀", "ünït", 8520812828698547, "champion", "champion"),
    ("threads-body-0002", 4, 4441144355937035, "champion", "challenger"),  # bucket 0.4931
    ("threads-body-0002", 3, 2317887557423849, "champion", "challenger"),
]

experiment_ids = st.text(max_size=40)
unit_ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.text(max_size=40))


@pytest.mark.parametrize(("experiment_id", "unit_id", "bucket_numerator", "arm", "ramped_arm"), FROZEN_VECTORS)
def test_frozen_vectors(experiment_id, unit_id, bucket_numerator, arm, ramped_arm):
    assert bucket(experiment_id, unit_id) == bucket_numerator / 2**53
    assert assign_arm(experiment_id, unit_id, 0.1) == arm
    assert assign_arm(experiment_id, unit_id, 0.5) == ramped_arm


def test_an_integer_unit_hashes_as_its_decimal_string():
    assert bucket("exp-body-7", 123456789) == bucket("exp-body-7", "123456789")


@given(experiment_ids, unit_ids)
def test_bucket_lies_in_the_unit_interval_and_is_deterministic(experiment_id, unit_id):
    value = bucket(experiment_id, unit_id)
    assert 0.0 <= value < 1.0
    assert bucket(experiment_id, unit_id) == value


@given(experiment_ids, unit_ids)
def test_share_zero_is_always_champion_and_share_one_always_challenger(experiment_id, unit_id):
    assert assign_arm(experiment_id, unit_id, 0.0) == "champion"
    assert assign_arm(experiment_id, unit_id, 1.0) == "challenger"


@given(
    experiment_ids,
    unit_ids,
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_raising_the_share_never_moves_a_challenger_unit_back(experiment_id, unit_id, share_a, share_b):
    lower, higher = sorted((share_a, share_b))
    if assign_arm(experiment_id, unit_id, lower) == "challenger":
        assert assign_arm(experiment_id, unit_id, higher) == "challenger"


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_observed_share_over_100k_units_is_within_binomial_tolerance(share):
    units = 100_000
    challengers = sum(assign_arm("threads-hook-0001", unit, share) == "challenger" for unit in range(units))
    tolerance = 4.5 * math.sqrt(units * share * (1 - share))  # 4.5 sigma: a false alarm ~1 in 150,000
    assert abs(challengers - units * share) < tolerance


def test_buckets_are_uniform():
    buckets = [bucket("threads-body-0001", f"post-{unit}") for unit in range(20_000)]
    assert stats.kstest(buckets, "uniform").pvalue > 1e-3


def test_experiments_hash_the_same_unit_independently():
    # If the experiment id were ignored, the same 10% of units would be challengers everywhere.
    units = 50_000
    in_both = sum(
        assign_arm("threads-hook-0001", unit, 0.1) == "challenger"
        and assign_arm("threads-hook-0002", unit, 0.1) == "challenger"
        for unit in range(units)
    )
    expected = units * 0.01
    assert abs(in_both - expected) < 4.5 * math.sqrt(expected * 0.99)


@pytest.mark.parametrize("share", [-0.01, 1.01, math.nan])
def test_share_outside_the_unit_interval_is_an_error(share):
    with pytest.raises(ValueError, match="challenger_share"):
        assign_arm("exp", 1, share)


@pytest.mark.parametrize("unit_id", [True, 1.5, None])
def test_unit_id_must_be_a_string_or_an_integer(unit_id):
    with pytest.raises(TypeError, match="unit_id"):
        bucket("exp", unit_id)


@given(experiment_id=st.text(max_size=40), unit_id=st.integers(min_value=0, max_value=2**63))
def test_a_route_names_the_arms_model_and_endpoint(experiment_id, unit_id):
    champion, challenger = ("gpt-4o-mini-2024-07-18", "openai"), ("threads-hook-sft-" + "0" * 24, "vllm-base")
    routed = route(experiment_id, unit_id, 0.3, champion=champion, challenger=challenger)
    assert routed.arm == assign_arm(experiment_id, unit_id, 0.3)
    assert (routed.model, routed.endpoint) == (challenger if routed.arm == "challenger" else champion)
