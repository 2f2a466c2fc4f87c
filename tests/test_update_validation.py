"""Update screening: malformed, non-finite and outsized updates are rejected, by site.

The size-aware rule is checked on real local training (the site's own churn task and DP
plan) of one big and four small synthetic storefronts.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from common import wire
from models.churn.model import CUTOFF
from models.churn.protocol import churn_cutoff, churn_data
from models.registry import get_model
from models.training import LocalTraining
from privacy.planning import opacus_sample_rate, plan_dp
from server.update_validation import (
    RoundPlan,
    SiteUpdate,
    ValidationPolicy,
    step_scale,
    update_norm,
    validate_updates,
)
from simulations.synthetic import generate_orders

CHURN = get_model("churn")
GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def metrics(num_examples: float = 50, noise_multiplier: float = 1.0) -> dict[str, float]:
    return {
        wire.NUM_EXAMPLES: num_examples,
        wire.EPSILON: 2.0,
        wire.DELTA: 1e-5,
        wire.DP_STEPS: 8,
        wire.NOISE_MULTIPLIER: noise_multiplier,
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
    fractional = honest(5, seed=5)
    fractional.metrics[wire.NUM_EXAMPLES] = 12.5
    accepted, rejections = validate_updates(
        GLOBAL, [honest(1, seed=1), leaky, zero_weight, nan_weight, fractional]
    )
    assert [u.node_id for u in accepted] == [1]
    assert reasons(rejections) == {
        2: "wrong-metric-keys",
        3: "bad-num-examples",
        4: "bad-num-examples",
        5: "bad-num-examples",
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


def test_step_scale_is_a_random_walk_of_signal_plus_noise():
    assert step_scale(16, 0.0, 1.0, 1000) == pytest.approx(4.0)  # no DP: √s
    # d σ² / b² = 100 * 4 / 4 = 100: noise dominates a tiny batch.
    assert step_scale(4, 2.0, 2.0, 100) == pytest.approx(math.sqrt(4 * 101))


def test_round_plan_reads_the_train_config_and_scales_each_site_like_its_training():
    config = {wire.LOCAL_EPOCHS: 2, wire.BATCH_SIZE: 64, wire.EPSILON_BUDGET: 8.0}
    plan = RoundPlan.from_train_config(config, GLOBAL)
    assert plan == RoundPlan(2, 64, num_parameters=15)
    assert plan.site_scale(640, 0.0) == pytest.approx(math.sqrt(2 * 10))  # 10 batches, 2 epochs
    # Under DP the site's own noise multiplier (its policy decides it) sets the noise term.
    expected_batch = 20 * opacus_sample_rate(20, 64)
    assert plan.site_scale(20, 1.7) == pytest.approx(step_scale(2, 1.7, expected_batch, 15))
    for key in (wire.LOCAL_EPOCHS, wire.BATCH_SIZE):
        partial = {k: v for k, v in config.items() if k != key}
        assert RoundPlan.from_train_config(partial, GLOBAL) is None


def test_a_reported_noise_multiplier_that_is_no_number_is_rejected():
    bad = honest(3, seed=3)
    bad.metrics[wire.NOISE_MULTIPLIER] = float("nan")
    negative = honest(4, seed=4)
    negative.metrics[wire.NOISE_MULTIPLIER] = -1.0
    updates = [honest(1, seed=1), honest(2, seed=2), bad, negative]
    accepted, rejections = validate_updates(GLOBAL, updates, plan=RoundPlan(1, 64, 15))
    assert [u.node_id for u in accepted] == [1, 2]
    assert reasons(rejections) == {3: "bad-noise-multiplier", 4: "bad-noise-multiplier"}


# --- Real local training: one big storefront and four small ones ---------------------

SITE_SIZES = (400, 20, 20, 20, 20)
BATCH_SIZE = 16
PLANNED_ROUNDS = 3


@pytest.fixture(scope="module")
def storefront_splits():
    """Churn training splits of five synthetic storefronts, the first 20x the others."""
    orders = generate_orders(n_storefronts=1, n_customers=800, n_items=40, seed=3)
    cutoff = churn_cutoff(orders)
    population = churn_data(orders, cutoff=cutoff).labels.index.to_numpy()
    customers = np.random.default_rng(0).permutation(population)
    config = {CUTOFF: cutoff.isoformat()}
    edges = np.cumsum((0, *SITE_SIZES))
    splits = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        site_orders = orders[orders["customer"].isin(customers[start:stop])]
        splits.append(CHURN.site_data(site_orders, config))
    return config, splits


def trained_round(storefront_splits, epsilon: float):
    """One round of real local churn training at every site, as ``train_round`` plans it."""
    config, splits = storefront_splits
    torch.manual_seed(0)
    start = CHURN.build(config).state_dict()
    global_weights = {k: v.numpy().copy() for k, v in start.items()}
    updates = []
    for node_id, split in enumerate(splits, start=1):
        n = len(split.train)
        sigma = None
        if epsilon > 0:
            sigma = plan_dp(
                n_customers=n,
                batch_size=BATCH_SIZE,
                local_epochs=1,
                planned_rounds=PLANNED_ROUNDS,
                epsilon_budget=epsilon,
            ).noise_multiplier
        module = CHURN.build(config)
        module.load_state_dict(start)
        settings = replace(CHURN.default_training, local_epochs=1, batch_size=BATCH_SIZE)
        local = LocalTraining(settings, noise_multiplier=sigma, seed=node_id)
        CHURN.train(module, split.train, local)
        weights = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
        updates.append(SiteUpdate(node_id, f"store-{node_id}", weights, metrics(n, sigma or 0.0)))
    plan = RoundPlan(1, BATCH_SIZE, num_parameters=89)
    return global_weights, updates, plan


def amplified(global_weights, update: SiteUpdate, factor: float) -> SiteUpdate:
    """The update an attacker sends: its honest update times ``factor`` (< 0: flipped)."""
    weights = {
        k: (global_weights[k] + factor * (v - global_weights[k])).astype(v.dtype)
        for k, v in update.weights.items()
    }
    return SiteUpdate(update.node_id, update.storefront, weights, dict(update.metrics))


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [0.0, 8.0], ids=["non-private", "dp-eps-8"])
def test_size_aware_rule_accepts_a_big_honest_site_and_rejects_boosted_updates(
    storefront_splits, epsilon
):
    global_weights, updates, plan = trained_round(storefront_splits, epsilon)
    sizes = [int(u.num_examples) for u in updates]
    assert sizes[0] >= 15 * max(sizes[1:])  # the big site really is big
    norms = np.array([update_norm(global_weights, u.weights) for u in updates])
    if epsilon == 0:
        # Signal-dominated: the plain rule would throw the big honest site away.
        assert norms[0] > 10 * np.median(norms)
        _, plain = validate_updates(global_weights, updates)
        assert reasons(plain) == {1: "norm-outlier"}

    accepted, rejections = validate_updates(global_weights, updates, plan=plan)
    assert rejections == []
    assert [u.node_id for u in accepted] == [1, 2, 3, 4, 5]

    for attacker, factor in ((0, 50.0), (0, -20.0), (2, 50.0)):
        attacked = list(updates)
        attacked[attacker] = amplified(global_weights, updates[attacker], factor)
        accepted, rejections = validate_updates(global_weights, attacked, plan=plan)
        node = attacker + 1
        assert reasons(rejections) == {node: "norm-outlier"}, (factor, node)
        assert node not in [u.node_id for u in accepted]
