"""Flower's in-process simulation of a ServerApp body with fedshop's real ClientApp.

``flwr.simulation.run_simulation`` gives simulated clients only ``partition-id`` and
``num-partitions``, not the run config, so the ClientApp here hands the sites the run
config the test chose (as ``flwr run`` would from ``--run-config``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from clients import client_app
from common import wire


def simulate_federation(
    server_main: Callable[[Grid, Context], None], run_config: dict[str, Any], sites: int
) -> None:
    """Run ``server_main`` against ``sites`` simulated sites that read ``run_config``."""
    server = ServerApp()
    server.main()(server_main)

    client = ClientApp()

    def with_run_config(context: Context) -> Context:
        return Context(
            context.run_id, context.node_id, context.node_config, context.state, run_config
        )

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return client_app.train(msg, with_run_config(context))

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return client_app.evaluate(msg, with_run_config(context))

    @client.query(wire.INSTALL_MODEL)
    def install_model(msg: Message, context: Context) -> Message:
        return client_app.install_model(msg, with_run_config(context))

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The round records of a run directory's ``rounds.jsonl``, in file order."""
    return [json.loads(line) for line in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()]
