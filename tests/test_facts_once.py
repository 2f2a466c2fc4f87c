"""Shared facts travel once per run: the real ServerApp loop and the real site task in a
Flower simulation, and what a site does with facts named only by their digest.

The sites here are the real :func:`clients.site_task.train_round` /
:func:`~clients.site_task.evaluate_round`, wrapped only to log what each message carried;
one site gets its first digest-only message with a digest it never saw (as a deployed site
that lost its disk would), refuses it with ``facts-unknown``, and must then get the facts
in full again.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from clients import client_app
from clients.facts_store import FACTS_DIR
from clients.site_task import evaluate_round, train_round
from common import wire
from lab.sequential import server_message
from server.server_app import plan_models, run_federation
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from tests.test_client_app import initial_arrays, train_message, write_split

pytestmark = pytest.mark.slow

LOSES_ITS_FACTS = 0


def logged_site(run_config: dict, log: Path) -> ClientApp:
    """The real site task, logging per message whether the facts came in full."""
    site = ClientApp()

    def answer(task, msg, context):
        partition = int(context.node_config["partition-id"])
        facts = dict(msg.content[wire.FACTS])
        in_full = len(facts) > 1
        entry = {"partition": partition, "type": msg.metadata.message_type, "full": in_full}
        earlier = (
            [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        )
        lost = (
            partition == LOSES_ITS_FACTS
            and not in_full
            and not any(e["partition"] == partition and not e["full"] for e in earlier)
        )
        if lost:  # as if its store were gone: a digest it never saw
            msg.content[wire.FACTS][wire.FACTS_DIGEST] = "0" * 64
        with log.open("a") as file:
            file.write(json.dumps(entry) + "\n")
        site_context = Context(
            context.run_id, context.node_id, context.node_config, context.state, run_config
        )
        return task(msg, site_context)

    site.train()(lambda msg, context: answer(train_round, msg, context))
    site.evaluate()(lambda msg, context: answer(evaluate_round, msg, context))
    return site


def test_facts_go_in_full_once_per_site_and_again_after_a_site_lost_them(tmp_path):
    split = write_split(tmp_path, names=("storefront-a", "storefront-b"))
    run_config = {
        **app_run_config(),
        "models": "recommender",
        "storefronts-dir": str(split),
        "run-dir": str(tmp_path / "run"),
        "num-server-rounds": 2,
        "evaluation-rounds": "all",
        "min-sites": 2,
        "recommender.batch-size": 16,
    }
    log = tmp_path / "messages.jsonl"
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, with_split_facts(run_config))

    run_simulation(
        server_app=server,
        client_app=logged_site(run_config, log),
        num_supernodes=2,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    carried = {
        partition: [(e["type"], e["full"]) for e in entries if e["partition"] == partition]
        for partition in (0, 1)
    }
    # 2 rounds of train + evaluate; the first message in full, then the digest only.
    assert carried[1] == [
        ("train", True),
        ("evaluate", False),
        ("train", False),
        ("evaluate", False),
    ]
    # Partition 0 refused its first digest-only message (facts-unknown), got the facts in
    # full with its next message, then the digest again.
    assert carried[0] == [
        ("train", True),
        ("evaluate", False),
        ("train", True),
        ("evaluate", False),
    ]
    rounds = [
        json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    ]
    refused = [r for r in rounds if r.get("evaluation-refused")]
    assert [r["round"] for r in refused] == [1]
    assert refused[0]["evaluation-refused"][0].startswith("facts-unknown (storefront-a): ")
    assert all(len(r["accepted"]) == 2 for r in rounds if r["model"] == "recommender")


def recall_in_a_fresh_process(ledger_dir: Path, digest: str) -> dict | None:
    """``recall_facts`` in a new Python process, as a deployed site answers each message."""
    recalled = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from pathlib import Path; from clients.facts_store import "
            "recall_facts; print(json.dumps(recall_facts(Path(sys.argv[1]), sys.argv[2])))",
            str(ledger_dir),
            digest,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(recalled.stdout)


def test_a_site_keeps_the_facts_on_disk_and_refuses_a_digest_it_does_not_hold(tmp_path):
    split = write_split(tmp_path, names=("storefront-a", "storefront-b"))
    run_config = {
        **app_run_config(),
        "storefronts-dir": str(split),
        "run-dir": str(tmp_path / "run"),
        "recommender.batch-size": 16,
    }
    run = {r.model.name: r for r in plan_models(with_split_facts(run_config))}["recommender"]
    digest = wire.facts_digest(run.facts)
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
    first = train_message(run, initial_arrays(run), epsilon=1.0)
    first.content[wire.FACTS][wire.FACTS_DIGEST] = digest
    assert not client_app.train(first, context).has_error()

    stored = tmp_path / "run" / "sites" / "storefront-a" / FACTS_DIR / f"{digest}.json"
    recalled = recall_in_a_fresh_process(stored.parent.parent, digest)
    assert recalled == json.loads(stored.read_text()) == run.facts

    def digest_only(value: str):
        request = run.content(initial_arrays(run), run.evaluate_config)
        request[wire.FACTS] = type(request[wire.FACTS])({wire.FACTS_DIGEST: value})
        return client_app.evaluate(server_message(request, "evaluate", 1), context)

    answered = digest_only(digest)  # the facts were kept: the site evaluates
    assert not answered.has_error()
    assert set(answered.content[wire.METRICS]) == run.model.evaluate_metric_keys
    unknown = digest_only("f" * 64)
    assert unknown.error.code == wire.FACTS_UNKNOWN
    assert unknown.error.reason.startswith("facts-unknown (storefront-a): no recommender ")

    tampered = train_message(run, initial_arrays(run), epsilon=1.0)
    tampered.content[wire.FACTS][wire.FACTS_DIGEST] = "e" * 64
    refused = client_app.train(tampered, context)
    assert refused.error.code == wire.DECLINED_SITE_ERROR
    assert "do not match their digest" in refused.error.reason

    stored.write_text(json.dumps({**run.facts, "catalogue": ["changed"]}))
    # a stored copy that no longer matches is not used
    assert recall_in_a_fresh_process(stored.parent.parent, digest) is None
