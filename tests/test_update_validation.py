"""Update screening: malformed, non-finite and outsized updates are rejected, by site."""

import numpy as np
import pytest

from clients import messages as wire
from server.update_validation import (
    SiteUpdate,
    ValidationPolicy,
    update_norm,
    validate_updates,
)

GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def metrics(num_examples: float = 50) -> dict[str, float]:
    return {
        wire.NUM_EXAMPLES: num_examples,
        wire.TRAIN_LOSS: 0.3,
        wire.EPSILON: 2.0,
        wire.DELTA: 1e-5,
        wire.DP_STEPS: 8,
    }


def honest(node_id: int, seed: int, scale: float = 0.1) -> SiteUpdate:
    rng = np.random.default_rng(seed)
    weights = {
        k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in GLOBAL.items()
    }
    return SiteUpdate(node_id, f"store-{node_id}", weights, metrics())


def with_weights(update: SiteUpdate, **arrays: np.ndarray) -> SiteUpdate:
    return SiteUpdate(
        update.node_id, update.storefront, {**update.weights, **arrays}, dict(update.metrics)
    )


def reasons(rejections) -> dict[int, str]:
    return {r.node_id: r.reason for r in rejections}


def test_update_norm_is_norm_of_difference_over_all_arrays():
    client = {"w": np.full((4, 3), 1.0, dtype=np.float32), "b": np.full(3, 2.0, dtype=np.float32)}
    assert update_norm(GLOBAL, client) == pytest.approx(np.sqrt(12 * 1.0 + 3 * 4.0))


def test_honest_round_is_accepted_entirely():
    updates = [honest(i, seed=i) for i in range(1, 6)]
    accepted, rejections = validate_updates(GLOBAL, updates)
    assert [u.node_id for u in accepted] == [1, 2, 3, 4, 5]
    assert rejections == []


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_rejected_with_site(bad_value):
    w = honest(2, seed=2).weights["w"].copy()
    w[1, 2] = bad_value
    updates = [honest(1, seed=1), with_weights(honest(2, seed=2), w=w), honest(3, seed=3)]
    accepted, rejections = validate_updates(GLOBAL, updates)
    assert [u.node_id for u in accepted] == [1, 3]
    assert len(rejections) == 1
    assert (rejections[0].node_id, rejections[0].storefront) == (2, "store-2")
    assert rejections[0].reason == "non-finite"
    assert "store-2" in str(rejections[0]) and "node 2" in str(rejections[0])


def test_wrong_shape_dtype_and_key_set_are_rejected():
    base = honest(1, seed=1)
    updates = [
        base,
        with_weights(honest(2, seed=2), w=np.zeros((3, 4), dtype=np.float32)),
        with_weights(honest(3, seed=3), b=np.zeros(3, dtype=np.float64)),
        with_weights(honest(4, seed=4), extra=np.zeros(1, dtype=np.float32)),
        SiteUpdate(5, "store-5", {"w": base.weights["w"]}, metrics()),
    ]
    accepted, rejections = validate_updates(GLOBAL, updates)
    assert [u.node_id for u in accepted] == [1]
    assert reasons(rejections) == {
        2: "wrong-shape",
        3: "wrong-dtype",
        4: "wrong-keys",
        5: "wrong-keys",
    }


def test_metrics_outside_the_contract_or_bad_weight_are_rejected():
    leaky = honest(2, seed=2)
    leaky.metrics["customer-count"] = 17.0
    zero_weight = honest(3, seed=3)
    zero_weight.metrics[wire.NUM_EXAMPLES] = 0
    nan_weight = honest(4, seed=4)
    nan_weight.metrics[wire.NUM_EXAMPLES] = float("nan")
    accepted, rejections = validate_updates(
        GLOBAL, [honest(1, seed=1), leaky, zero_weight, nan_weight]
    )
    assert [u.node_id for u in accepted] == [1]
    assert reasons(rejections) == {
        2: "wrong-metric-keys",
        3: "bad-num-examples",
        4: "bad-num-examples",
    }


def test_update_100x_the_median_norm_is_rejected():
    honest_updates = [honest(i, seed=i) for i in range(1, 5)]
    boosted = honest(9, seed=9, scale=10.0)  # 100x the honest update scale
    accepted, rejections = validate_updates(GLOBAL, [*honest_updates, boosted])
    assert [u.node_id for u in accepted] == [1, 2, 3, 4]
    assert reasons(rejections) == {9: "norm-outlier"}


def test_norm_ratio_threshold_is_configurable():
    updates = [honest(i, seed=i) for i in range(1, 5)] + [honest(9, seed=9, scale=0.5)]
    _, lenient = validate_updates(GLOBAL, updates, ValidationPolicy(max_norm_ratio=10.0))
    _, strict = validate_updates(GLOBAL, updates, ValidationPolicy(max_norm_ratio=2.0))
    assert lenient == []
    assert reasons(strict) == {9: "norm-outlier"}


def test_median_rule_is_skipped_below_three_replies_but_cap_applies():
    updates = [honest(1, seed=1), honest(9, seed=9, scale=10.0)]
    accepted, rejections = validate_updates(GLOBAL, updates)
    assert [u.node_id for u in accepted] == [1, 9]  # two replies: no median to compare with
    assert rejections == []
    capped, rejections = validate_updates(GLOBAL, updates, ValidationPolicy(max_update_norm=5.0))
    assert [u.node_id for u in capped] == [1]
    assert reasons(rejections) == {9: "norm-above-cap"}


def test_malformed_updates_do_not_count_towards_the_median():
    # Two malformed replies + two honest + one outlier: the median is taken over the
    # three well-formed ones, so the outlier is still judged against honest norms.
    bad = with_weights(honest(5, seed=5), w=np.zeros((1, 1), dtype=np.float32))
    updates = [honest(1, seed=1), honest(2, seed=2), bad, honest(9, seed=9, scale=10.0)]
    accepted, rejections = validate_updates(GLOBAL, updates)
    assert [u.node_id for u in accepted] == [1, 2]
    assert reasons(rejections) == {5: "wrong-shape", 9: "norm-outlier"}


def test_policy_rejects_meaningless_thresholds():
    with pytest.raises(ValueError, match="max_norm_ratio"):
        ValidationPolicy(max_norm_ratio=1.0)
    with pytest.raises(ValueError, match="min_replies_for_median"):
        ValidationPolicy(min_replies_for_median=2)
    with pytest.raises(ValueError, match="max_update_norm"):
        ValidationPolicy(max_update_norm=0.0)
