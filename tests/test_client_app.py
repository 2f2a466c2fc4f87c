"""The site side: locating the data and the real ClientApp handlers (the site's privacy
policy at work: tests/test_site_policy.py)."""

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from clients import client_app
from clients.site_data import SiteDataError, load_orders, locate_site, storefront_of
from common import wire
from common.wire_encoding import INT8, LEVELS, decode_int8, encode_int8
from lab.sequential import server_message
from models.churn import model as churn
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.policy import SitePolicy
from server.server_app import ModelRun, plan_models
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders


def write_split(tmp_path, names=("storefront-b", "storefront-a")):
    frame = generate_orders(n_storefronts=len(names), n_customers=600, n_items=30, seed=5)
    frame["storefront"] = frame["storefront"].map(
        {f"storefront-{i}": name for i, name in enumerate(names)}
    )
    prepare_storefronts(frame, tmp_path / "split")
    return tmp_path / "split"


def test_deployment_site_reads_data_path_and_keeps_its_ledger_there(tmp_path):
    location = locate_site({"data-path": str(tmp_path), "storefront": "Norway"}, {})
    assert location.orders_file == tmp_path / "orders.parquet"
    assert location.ledger_dir == tmp_path and not location.simulated
    with pytest.raises(SiteDataError, match="orders.parquet: prepared orders not found"):
        load_orders(location)


def test_simulated_partitions_are_the_sorted_storefront_directories(tmp_path):
    split = write_split(tmp_path)
    run_config = {"storefronts-dir": str(split), "run-dir": str(tmp_path / "run")}
    first = locate_site({"partition-id": 0, "num-partitions": 2}, run_config)
    second = locate_site({"partition-id": 1, "num-partitions": 2}, run_config)
    assert first.orders_file == split / "storefront-a" / "orders.parquet"
    assert second.orders_file == split / "storefront-b" / "orders.parquet"
    # Each simulated site keeps its ledger in the run, not in the shared split.
    assert first.ledger_dir == tmp_path / "run" / "sites" / "storefront-a"
    orders = load_orders(second)
    assert set(orders["storefront"]) == {"storefront-b"}
    assert storefront_of(second, orders) == "storefront-b"
    with pytest.raises(SiteDataError, match="partition 2 has no storefront"):
        locate_site({"partition-id": 2}, run_config)


def test_a_node_without_data_location_is_told_how_to_start(tmp_path):
    with pytest.raises(SiteDataError, match="--node-config"):
        locate_site({}, {})
    with pytest.raises(SiteDataError, match="storefronts-dir"):
        locate_site({"partition-id": 0}, {"storefronts-dir": ""})


@pytest.fixture(scope="module")
def site_round(tmp_path_factory):
    """A simulated site (partition 1) and the server's round-1 messages for the recommender."""
    tmp_path = tmp_path_factory.mktemp("site")
    split = write_split(tmp_path, names=("storefront-a", "storefront-b"))
    run_config = {
        **app_run_config(),
        "storefronts-dir": str(split),
        "run-dir": str(tmp_path / "run"),
        "recommender.batch-size": 16,
        "churn.batch-size": 16,
    }
    runs = {run.model.name: run for run in plan_models(with_split_facts(run_config))}
    arrays = initial_arrays(runs["recommender"])
    model_config = runs["recommender"].evaluate_config
    context = Context(1, 1, {"partition-id": 1, "num-partitions": 2}, RecordDict(), run_config)
    return split, run_config, arrays, model_config, context, runs


def initial_arrays(run: ModelRun) -> ArrayRecord:
    weights = run.model.initial_weights(run.facts)
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def train_message(
    run: ModelRun, arrays: ArrayRecord, epsilon: float, planned_rounds: int = 2, **extra
) -> Message:
    config = {
        **run.train_config,
        wire.EPSILON_BUDGET: epsilon,
        wire.PLANNED_ROUNDS: planned_rounds,
        wire.SERVER_ROUND: 1,
        **extra,
    }
    return server_message(run.content(arrays, config), "train", 1)


def wire_text(content: RecordDict) -> bytes:
    """Everything a reply carries, as bytes: array buffers, metric and config values."""
    parts = [repr(dict(content.metric_records)), repr(dict(content.config_records))]
    text = "".join(parts).encode()
    return text + b"".join(
        array.data for record in content.array_records.values() for array in record.values()
    )


def test_replies_carry_exactly_the_documented_keys_and_no_customer_token(site_round):
    split, _, arrays, model_config, context, runs = site_round
    reply = client_app.train(train_message(runs["recommender"], arrays, epsilon=3.0), context)
    assert not reply.has_error()
    content = reply.content
    assert set(content.array_records) == {wire.ARRAYS}
    assert set(content[wire.ARRAYS]) == set(arrays)
    assert set(content.metric_records) == {wire.METRICS}
    assert set(content[wire.METRICS]) == wire.TRAIN_METRIC_KEYS
    assert set(content.config_records) == {wire.SITE}
    assert dict(content[wire.SITE]) == {wire.STOREFRONT: "storefront-b", wire.PRIVACY_NOTE: ""}
    assert content[wire.METRICS][wire.DP_STEPS] > 0

    evaluation = client_app.evaluate(
        server_message(
            runs["recommender"].content(content[wire.ARRAYS], model_config), "evaluate", 1
        ),
        context,
    ).content
    assert set(evaluation.metric_records) == {wire.METRICS}
    assert set(evaluation[wire.METRICS]) == runs["recommender"].model.evaluate_metric_keys
    assert set(evaluation.array_records) == set()

    tokens = set(load_orders(locate_site(context.node_config, context.run_config))["customer"])
    assert tokens
    for sent in (wire_text(content), wire_text(evaluation)):
        assert not [token for token in tokens if token.encode() in sent]


def allow_training_without_dp(run_config: dict, slug: str) -> Path:
    """Give a simulated site a policy that allows non-private training; its ledger path."""
    path = Path(run_config["run-dir"]) / "sites" / slug / LEDGER_FILE
    policy = SitePolicy(dp_required=False, delta=1e-5)
    with PrivacyLedger(path) as ledger:
        if ledger.policy() != policy:
            ledger.set_policy(policy, set_by="test", reason="no DP")
    return path


def test_a_non_private_round_needs_the_sites_consent_and_spends_nothing(site_round):
    _, run_config, arrays, _, _, runs = site_round
    request = train_message(runs["recommender"], arrays, epsilon=0.0)
    context = Context(1, 2, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
    refused = client_app.train(request, context)  # the default policy requires DP
    assert refused.error.code == wire.DECLINED_POLICY
    assert refused.error.reason.startswith("privacy-policy (storefront-a): ")

    ledger = allow_training_without_dp(run_config, "storefront-a")
    reply = client_app.train(request, context)
    metrics = reply.content[wire.METRICS]
    assert math.isinf(metrics[wire.EPSILON])
    assert metrics[wire.DELTA] == 0.0 and metrics[wire.DP_STEPS] == 0
    assert metrics[wire.NOISE_MULTIPLIER] == 0.0
    assert "without DP" in reply.content[wire.SITE][wire.PRIVACY_NOTE]
    with PrivacyLedger(ledger) as opened:  # no DP-SGD step: only the noisy cohort sizes
        assert {entry.purpose for entry in opened.entries("recommender")} == {"cohort"}


def test_churn_trains_under_dp_and_evaluates_into_score_histograms(site_round):
    _, run_config, _, _, _, runs = site_round
    context = Context(1, 3, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
    run = runs["churn"]
    weights = run.model.initial_weights(run.facts)
    reply = client_app.train(train_message(run, initial_arrays(run), epsilon=1.0), context).content
    metrics = reply[wire.METRICS]
    assert set(metrics) == wire.TRAIN_METRIC_KEYS and metrics[wire.DP_STEPS] > 0
    ledger_path = Path(run_config["run-dir"]) / "sites" / "storefront-a" / LEDGER_FILE
    with PrivacyLedger(ledger_path) as ledger:
        assert metrics[wire.EPSILON] == ledger.epsilon("churn", metrics[wire.DELTA])
    assert 0 < metrics[wire.EPSILON] < 1.0  # one of two planned rounds
    assert any(not np.array_equal(reply[wire.ARRAYS][k].numpy(), v) for k, v in weights.items())

    request = run.content(reply[wire.ARRAYS], run.evaluate_config)
    evaluation = client_app.evaluate(server_message(request, "evaluate", 1), context).content[
        wire.METRICS
    ]
    assert set(evaluation) == run.model.evaluate_metric_keys
    histogram = evaluation[churn.SCORE_HISTOGRAM]
    assert len(histogram) == 2 * churn.SCORE_CELLS
    assert all(float(count).is_integer() for count in histogram)  # discrete noise
    # Noisy, but around the held-out customers: the cells' noise is the stated one.
    noise = evaluation[wire.NOISE_SD] * np.sqrt(len(histogram))
    assert abs(sum(histogram) - evaluation[wire.NUM_EXAMPLES]) < 5 * (noise + 10)
    assert 0 < evaluation[wire.EVALUATION_EPSILON] <= evaluation[wire.EPSILON]


def test_fedprox_mu_from_the_server_keeps_the_local_model_near_the_global_one(site_round):
    _, run_config, _, _, _, runs = site_round
    run = runs["churn"]
    weights = run.model.initial_weights(run.facts)
    arrays = initial_arrays(run)
    allow_training_without_dp(run_config, "storefront-a")

    def distance_travelled(extra: dict) -> float:
        context = Context(1, 4, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
        message = train_message(
            run, arrays, epsilon=0.0, planned_rounds=1, **{wire.LEARNING_RATE: 0.05, **extra}
        )
        reply = client_app.train(message, context).content
        return float(
            np.sqrt(
                sum(((reply[wire.ARRAYS][k].numpy() - v) ** 2).sum() for k, v in weights.items())
            )
        )

    free = distance_travelled({})
    held = distance_travelled({wire.PROXIMAL_MU: 10.0})  # lr 0.05 x mu 10 = half-way back
    assert free > 0
    assert held < 0.7 * free


def test_a_site_trains_from_the_decoded_weights_and_returns_its_update_in_8_bits(site_round):
    _, run_config, _, _, _, runs = site_round
    run = runs["recommender"]
    allow_training_without_dp(run_config, "storefront-a")  # deterministic: no DP noise
    context = Context(1, 4, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
    exact = run.model.initial_weights(run.facts)
    exact["item_bias.bias"] = np.random.default_rng(2).normal(0, 1, exact["item_bias.bias"].shape)
    exact = {k: np.asarray(v, dtype=np.float32) for k, v in exact.items()}
    sent = encode_int8(exact)
    received = decode_int8(sent)

    def trained(arrays: dict, encoding: str) -> dict:
        request = train_message(
            run,
            ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            epsilon=0.0,
            **{wire.UPDATE_ENCODING: encoding},
        )
        reply = client_app.train(request, context)
        assert not reply.has_error(), reply.error.reason
        return {k: v.numpy() for k, v in reply.content[wire.ARRAYS].items()}

    # The float32 reply from the decoded weights is what the int8 site trained to.
    reference = trained(received, "float32")
    encoded_reply = trained(sent, INT8)
    assert encoded_reply["personal.weight_0"].dtype == np.uint8  # 240 values: one byte each
    assert encoded_reply["item_bias.bias"].dtype == np.float32  # 20 items: as is
    update = decode_int8(encoded_reply)
    for name, value in reference.items():
        exact_update = value - received[name]
        assert (
            np.abs(update[name] - exact_update).max()
            <= (exact_update.max() - exact_update.min()) / LEVELS * 1.001
        )
    assert any(np.abs(reference[k] - received[k]).max() > 0 for k in reference)  # it trained
