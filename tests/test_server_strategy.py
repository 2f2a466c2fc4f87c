"""Screened strategies: validation before aggregation, robust means, FedProx/FedAdam, offsets."""

import logging

import numpy as np
import pytest
from flower_replies import NodeList, reply, train_metrics
from flwr.app import Array, ArrayRecord, ConfigRecord, Error
from flwr.supercore.task_identity import TaskIdentity

from common import wire
from server.strategy import (
    ScreenedFedAdam,
    ScreenedFedAvg,
    ScreenedFedProx,
    StrategySettings,
    build_strategy,
)
from server.update_validation import ValidationPolicy


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """Messages are stamped with the sending task's identity, as inside a running ServerApp."""
    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


GLOBAL = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def site_weights(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, dtype=np.float32) for k, v in GLOBAL.items()}


def start_round(strategy, server_round: int = 1, nodes=(1, 2, 3, 4, 5), config=None):
    """Run configure_train as strategy.start would, returning the sent messages."""
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    return list(
        strategy.configure_train(
            server_round, arrays, ConfigRecord(config or {}), NodeList(list(nodes))
        )
    )


def aggregated(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def honest_and_poisoned(poison: float = 1000.0):
    honest = [reply(i, site_weights(0.1 * i), metrics=train_metrics(100)) for i in (1, 2, 3, 4)]
    return [*honest, reply(5, site_weights(poison), storefront="Atlantis")]


def test_weighted_fedavg_uses_num_examples():
    strategy = build_strategy(StrategySettings())
    start_round(strategy, nodes=(1, 2))
    replies = [
        reply(1, site_weights(1.0), metrics=train_metrics(num_examples=300)),
        reply(2, site_weights(2.0), metrics=train_metrics(num_examples=100)),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated(arrays)["w"], 1.25)
    assert metrics["num-sites"] == 2 and metrics[wire.NUM_EXAMPLES] == 400


def test_poisoned_site_is_rejected_and_logged_with_its_storefront(caplog):
    strategy = build_strategy(StrategySettings())
    start_round(strategy)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(1, honest_and_poisoned())
    np.testing.assert_allclose(aggregated(arrays)["w"], 0.25, rtol=1e-6)  # mean of 0.1..0.4
    report = strategy.round_reports[1]
    assert [(r.node_id, r.storefront, r.reason) for r in report.rejected] == [
        (5, "Atlantis", "norm-outlier")
    ]
    assert "node 5 (Atlantis)" in caplog.text


@pytest.mark.parametrize("aggregation", ["trimmed-mean", "median"])
def test_robust_means_resist_one_poisoned_site_without_screening(aggregation):
    # A ratio so loose that screening lets the poison through: the robust rule must cope.
    settings = StrategySettings(aggregation=aggregation, trim_fraction=0.2)
    strategy = build_strategy(settings)
    strategy.policy = type(strategy.policy)(max_norm_ratio=1e9)
    start_round(strategy)
    arrays, _ = strategy.aggregate_train(1, honest_and_poisoned())
    assert strategy.round_reports[1].rejected == []
    w = aggregated(arrays)["w"]
    assert np.all(w <= 0.4 + 1e-6) and np.all(w >= 0.1 - 1e-6)  # within the honest range
    plain = build_strategy(StrategySettings())
    plain.policy = strategy.policy
    start_round(plain)
    plain_arrays, _ = plain.aggregate_train(1, honest_and_poisoned())
    assert aggregated(plain_arrays)["w"].min() > 100  # the plain mean is dragged away


NON_PRIVATE_PLAN = {
    wire.LOCAL_EPOCHS: 1,
    wire.BATCH_SIZE: 16,
    wire.EPSILON_BUDGET: 0.0,
    wire.PLANNED_ROUNDS: 3,
}


def test_screening_judges_norms_per_step_scale_of_the_plan_it_sent(caplog):
    # A big site (1,600 customers: 100 steps of batch 16) moves 8x the 1-step sites; per
    # step scale √100 that is 0.8x, honest. The same update from a 1-step site is not.
    def round_replies(big_site_examples: int):
        small = [reply(i, site_weights(0.1), metrics=train_metrics(16)) for i in (1, 2, 3)]
        big = reply(4, site_weights(0.8), metrics=train_metrics(big_site_examples))
        return [*small, big]

    planned = build_strategy(StrategySettings(policy=ValidationPolicy(max_norm_ratio=5.0)))
    start_round(planned, nodes=(1, 2, 3, 4), config=NON_PRIVATE_PLAN)
    planned.aggregate_train(1, round_replies(1600))
    assert planned.round_reports[1].rejected == []
    start_round(planned, server_round=2, nodes=(1, 2, 3, 4), config=NON_PRIVATE_PLAN)
    planned.aggregate_train(2, round_replies(16))
    assert [(r.node_id, r.reason) for r in planned.round_reports[2].rejected] == [
        (4, "norm-outlier")
    ]

    unplanned = build_strategy(StrategySettings(policy=ValidationPolicy(max_norm_ratio=5.0)))
    with caplog.at_level(logging.INFO, logger="flwr"):
        start_round(unplanned, nodes=(1, 2, 3, 4))
    assert "screening compares plain update norms" in caplog.text
    unplanned.aggregate_train(1, round_replies(1600))
    assert [r.node_id for r in unplanned.round_reports[1].rejected] == [4]


def test_malformed_and_nonfinite_replies_do_not_abort_the_round():
    strategy = build_strategy(StrategySettings())
    start_round(strategy)
    nan = site_weights(0.2)
    nan["b"][0] = np.nan
    replies = [
        reply(1, site_weights(0.1)),
        reply(2, nan),
        reply(3, {"w": np.zeros((2, 3), dtype=np.float32), "b": GLOBAL["b"]}),
        reply(4, site_weights(0.3), metrics={**train_metrics(), "raw-rows": 3.0}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated(arrays)["w"], 0.1)
    assert {r.node_id: r.reason for r in strategy.round_reports[1].rejected} == {
        2: "non-finite",
        3: "wrong-shape",
        4: "wrong-metric-keys",
    }


def test_declined_sites_are_logged_and_too_few_updates_keep_the_previous_model(caplog):
    strategy = build_strategy(StrategySettings(min_accepted=2))
    start_round(strategy, nodes=(1, 2, 3))
    declined = Error(wire.DECLINED_BUDGET_EXHAUSTED, "privacy-budget-exhausted: 3.1 > 3.0")
    replies = [
        reply(1, site_weights(0.1)),
        reply(2, error=declined),
        reply(3, error=Error(5, "Node Unavailable")),
    ]
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None
    report = strategy.round_reports[1]
    assert report.kept_previous_model
    assert report.accepted == ["site-1"]
    assert "privacy-budget-exhausted" in report.declined[0]
    assert report.failed and "error 5" in report.failed[0]
    assert "keeping the previous global model" in caplog.text


def test_fedprox_sends_proximal_mu_and_absolute_round():
    strategy = build_strategy(StrategySettings(server_optimizer="fedprox", proximal_mu=0.05))
    assert isinstance(strategy, ScreenedFedProx)
    strategy.round_offset = 4
    messages = start_round(strategy, server_round=2, nodes=(1, 2))
    config = messages[0].content[wire.CONFIG]
    assert config[wire.PROXIMAL_MU] == pytest.approx(0.05)
    assert config[wire.SERVER_ROUND] == 6 and config[wire.ROUND_OFFSET] == 4


def test_fedadam_steps_and_its_state_round_trips():
    strategy = build_strategy(
        StrategySettings(server_optimizer="fedadam", server_learning_rate=0.1)
    )
    assert isinstance(strategy, ScreenedFedAdam)
    start_round(strategy, nodes=(1, 2))
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, site_weights(0.5)), reply(2, site_weights(0.5))]
    )
    w = aggregated(arrays)["w"]
    assert w.dtype == np.float32  # Adam's float64 scalars must not change the global dtype
    assert np.all(w > 0) and not np.allclose(w, 0.5)  # an Adam step, not the plain mean
    state = strategy.optimizer_state()
    assert set(state) == {"m_t", "v_t"}

    restored = build_strategy(StrategySettings(server_optimizer="fedadam"))
    restored.load_optimizer_state(state)
    for name in ("m_t", "v_t"):
        for key in GLOBAL:
            np.testing.assert_array_equal(getattr(restored, name)[key], state[name][key])
    assert build_strategy(StrategySettings()).optimizer_state() == {}


def test_settings_from_run_config_and_bad_names():
    settings = StrategySettings.from_run_config(
        {"server-optimizer": "fedadam", "aggregation": "median", "max-norm-ratio": 5.0}
    )
    assert settings.server_optimizer == "fedadam" and settings.aggregation == "median"
    assert settings.policy.max_norm_ratio == 5.0 and settings.policy.max_update_norm is None
    assert isinstance(build_strategy(StrategySettings()), ScreenedFedAvg)
    with pytest.raises(ValueError, match="server-optimizer"):
        build_strategy(StrategySettings(server_optimizer="sgd"))
    with pytest.raises(ValueError, match="aggregation"):
        build_strategy(StrategySettings(aggregation="mode"))


def test_a_stand_in_reply_of_the_superlink_is_charged_to_the_node_that_went_away():
    # A SIGKILLed node is answered for by the SuperLink (error NODE_UNAVAILABLE, sent from
    # the SuperLink's own id 1); the reply names the instruction it answers.
    strategy = build_strategy(StrategySettings(min_sites=1))
    sent = {msg.metadata.dst_node_id: msg for msg in start_round(strategy, nodes=(3, 4))}
    # The Grid stamps each message's id when it pushes it, as Flower does here:
    sent[3].metadata.__dict__["_message_id"] = "instruction-3"
    sent[4].metadata.__dict__["_message_id"] = "instruction-1"
    replies = [
        reply(3, site_weights(1.0), storefront="Germany"),
        reply(1, error=Error(code=5, reason="node unavailable")),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated(arrays)["w"], 1.0)
    assert strategy.round_reports[1].failed == ["node 4 (unknown storefront): error 5"]


def test_a_node_that_never_replies_is_named_failed():
    strategy = build_strategy(StrategySettings(min_sites=1))
    start_round(strategy, nodes=(1, 2))
    arrays, _ = strategy.aggregate_train(1, [reply(1, site_weights(1.0), storefront="France")])
    np.testing.assert_allclose(aggregated(arrays)["w"], 1.0)
    assert strategy.round_reports[1].failed == [
        "node 2 (unknown storefront): no reply within the round timeout"
    ]
