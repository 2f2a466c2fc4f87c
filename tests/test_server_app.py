"""The ServerApp loop in Flower's simulation: screening, checkpoints, resume, bundle.

The model is the plug-in ``tests.plugin_model`` (a linear layer), found by the server
through the registry; the sites here train it on their own random data by plain least
squares (the real site task is exercised in test_client_app.py); the server code under
test is the real ``run_federation`` inside a real Flower simulation. A "kill" is the
ServerApp process dying right after a round's checkpoint; the next start must resume at
the next round.
"""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from clients.site_task import received_weights
from common import wire
from common.wire_encoding import INT8, encode_int8
from server.bundle import load_bundle
from server.checkpoint import latest_checkpoint
from server.server_app import run_federation
from tests.plugin_model import ERROR_CAP, SQUARED_ERROR_SUM

pytestmark = pytest.mark.slow

MODEL = "tests.plugin_model"
FEATURES = 3
POISONED_PARTITION = 2
TRUE_COEF = np.arange(1, FEATURES + 1, dtype=np.float32)


def site_data(partition: int):
    rng = np.random.default_rng(partition)
    x = rng.standard_normal((60, FEATURES)).astype(np.float32)
    return x, x @ TRUE_COEF + 0.1 * rng.standard_normal(60).astype(np.float32)


site = ClientApp()


@site.train()
def train(msg: Message, context: Context, log_dir: str = "") -> Message:
    partition = int(context.node_config["partition-id"])
    config = msg.content[wire.CONFIG]
    received = received_weights(msg, str(config[wire.UPDATE_ENCODING]))
    coef, bias = received["weight"][0], received["bias"]
    x, y = site_data(partition)
    for _ in range(20):
        residual = x @ coef + bias - y
        coef = coef - 0.05 * (2 / len(y)) * x.T @ residual
        bias = bias - 0.05 * 2 * residual.mean()
    if partition == POISONED_PARTITION:
        coef = coef * 1000
    with open(f"{log_dir}/rounds-seen.txt", "a") as file:
        file.write(f"{partition} {config[wire.SERVER_ROUND]} {config[wire.ROUND_OFFSET]}\n")
    trained = {
        "weight": coef[None, :].astype(np.float32),
        "bias": np.asarray(bias, dtype=np.float32),
    }
    reply = trained  # the default int8 encoding sends the update, as a real site does
    if config[wire.UPDATE_ENCODING] == INT8:
        update = {k: v - received[k] for k, v in trained.items()}
        reply = encode_int8(update, np.random.default_rng(partition))
    return Message(
        RecordDict(
            {
                wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in reply.items()}),
                wire.METRICS: MetricRecord(
                    {
                        wire.NUM_EXAMPLES: len(y),
                        wire.EPSILON: 0.0,
                        wire.DELTA: 0.0,
                        wire.DP_STEPS: 0,
                        wire.NOISE_MULTIPLIER: 0.0,
                    }
                ),
                wire.SITE: ConfigRecord(
                    {wire.STOREFRONT: f"store-{partition}", wire.PRIVACY_NOTE: ""}
                ),
            }
        ),
        reply_to=msg,
    )


@site.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    coef = msg.content[wire.ARRAYS]["weight"].numpy()[0]
    bias = msg.content[wire.ARRAYS]["bias"].numpy()
    x, y = site_data(int(context.node_config["partition-id"]) + 100)
    shares = np.minimum((x @ coef + bias - y) ** 2 / ERROR_CAP, 1.0)
    metrics = {  # exact answers, as a site's release would send them noisy
        wire.NUM_EXAMPLES: len(y),
        SQUARED_ERROR_SUM: float(np.sum(shares)),
        wire.NOISE_SD: 0.0,
        wire.NUM_EXAMPLES_NOISE_SD: 0.0,
        wire.EPSILON: 0.0,
        wire.EVALUATION_EPSILON: 0.0,
    }
    return Message(RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)


class ServerKilled(Exception):
    """Stands for the ServerApp process dying."""


class DiesAfterRounds:
    """A Grid that goes down when the given number of training rounds has completed."""

    def __init__(self, grid: Grid, rounds: int) -> None:
        self.grid, self.train_rounds_left = grid, rounds

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            if self.train_rounds_left == 0:
                raise ServerKilled
            self.train_rounds_left -= 1
        return self.grid.send_and_receive(messages, timeout=timeout)

    def __getattr__(self, name):
        return getattr(self.grid, name)


def simulate(run_config: dict, log_dir: str, die_after: int | None = None) -> None:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_grid = grid if die_after is None else DiesAfterRounds(grid, die_after)
        try:
            run_federation(run_grid, run_config)
        except ServerKilled:
            pass

    client = ClientApp()

    @client.train()
    def client_train(msg, context):
        return train(msg, context, log_dir)

    @client.evaluate()
    def client_evaluate(msg, context):
        return evaluate(msg, context)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )


def test_killed_server_resumes_without_lost_or_repeated_rounds(tmp_path):
    run_config = {
        "models": MODEL,
        "num-server-rounds": 4,
        "run-dir": str(tmp_path / "run"),
        "min-sites": 3,
    }
    simulate(run_config, str(tmp_path), die_after=2)
    assert latest_checkpoint(tmp_path / "run").rounds_done(MODEL) == 2
    assert not (tmp_path / "run" / "bundle").exists()

    simulate(run_config, str(tmp_path))

    rounds = [
        json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for record in rounds:  # the poisoned site is rejected every round, by name
        assert [(r["storefront"], r["reason"]) for r in record["rejected"]] == [
            ("store-2", "norm-outlier")
        ]
        assert sorted(record["accepted"]) == ["store-0", "store-1"]
    seen = sorted(
        tuple(map(int, line.split()))
        for line in (tmp_path / "rounds-seen.txt").read_text().splitlines()
    )
    assert sorted({(rnd, offset) for _, rnd, offset in seen}) == [(1, 0), (2, 0), (3, 2), (4, 2)]
    assert len(seen) == 4 * 3  # every site trained each round exactly once

    manifest, weights = load_bundle(tmp_path / "run" / "bundle")
    assert manifest["models"][MODEL]["rounds-done"] == 4
    assert manifest["models"][MODEL]["artefacts"] == {}
    assert set(manifest["models"][MODEL]["privacy-per-storefront"]) == {
        "store-0",
        "store-1",
        "store-2",
    }
    # Honest sites fit y = x @ [1, 2, 3, 4]; the poisoned one had no say.
    np.testing.assert_allclose(weights[MODEL]["weight"][0], TRUE_COEF, atol=0.3)
    assert rounds[0]["evaluate-metrics"] == {}  # evaluation-rounds = "last"
    assert rounds[-1]["evaluate-metrics"]["mse"] < 0.5
