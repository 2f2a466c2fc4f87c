"""Benchmark: bytes on the wire per site and round, against the dense float32 parameters.

Run ``python -m lab.benchmarks.wire_bytes``; it prints a Markdown section for
BENCHMARKS.md. For each model it builds the server's real train instruction (global
weights, training plan, shared facts such as the recommender's catalogue) and one site's
real reply (:func:`clients.site_task.train_round` on a storefront of the bundled data,
DP at ε = 8, so weights plus the fixed metric keys), under each update encoding (dense
float32, and 8-bit: :mod:`common.wire_encoding`), and measures them as Flower serialises
them (``flwr.common.serde.message_to_proto``), next to ``4 x d`` bytes for the model's
``d`` parameters. The instruction is measured twice: as a site's first message of a run
(the shared facts in full) and as every later one (their digest only).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto

from clients.site_task import train_round
from common import wire
from common.wire_encoding import UPDATE_ENCODINGS
from lab.sequential import server_message
from server.server_app import ModelRun, plan_models
from server.strategy import facts_record, training_arrays
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.runner import app_run_config, storefront_slugs
from simulations.shared_facts import with_split_facts
from simulations.storefronts import prepare_bundled_storefronts


def serialised_bytes(message: Message) -> int:
    """Size of ``message`` as Flower serialises it for the wire."""
    return len(message_to_proto(message).SerializeToString())


MESSAGES = (
    "server → site, first message (facts in full)",
    "server → site, later messages (facts digest)",
    "site → server (train reply)",
)


def measure_model(run: ModelRun, config: dict, node: int, encoding: str) -> list[int]:
    """Bytes of the three :data:`MESSAGES` for ``run`` under ``encoding`` (round 1, real
    site reply; ``config`` is the run config of a fresh run directory)."""
    weights = run.model.initial_weights(run.facts)
    train_config = {
        **run.train_config,
        wire.SERVER_ROUND: 1,
        wire.ROUND_OFFSET: 0,
        wire.UPDATE_ENCODING: encoding,
    }
    digest, packed = wire.facts_digest(run.facts), wire.pack_facts(run.facts)
    sent = {}
    for in_full in (True, False):
        content = RecordDict(
            {
                wire.ARRAYS: training_arrays(weights, encoding),
                wire.CONFIG: ConfigRecord(train_config),
                wire.FACTS: facts_record(digest, packed if in_full else None),
            }
        )
        sent[in_full] = server_message(content, "train", node)
    context = Context(1, node, {"partition-id": node}, RecordDict(), config)
    reply = train_round(sent[True], context)
    if reply.has_error():
        raise SystemExit(f"{run.model.name}: the site declined: {reply.error.reason}")
    return [serialised_bytes(message) for message in (sent[True], sent[False], reply)]


def main(argv: list[str] | None = None) -> int:
    """Measure one round of each model at one storefront and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storefront", default="germany", help="storefront directory name")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").propagate = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="wire-bytes-") as temporary:
        split = Path(temporary) / "storefronts"
        prepare_bundled_storefronts(split)
        slugs = storefront_slugs(split)
        if args.storefront not in slugs:
            parser.error(f"--storefront must be one of {slugs}")
        node = slugs.index(args.storefront)
        base = {**app_run_config(), **MAIN_RUN_CONFIG, "storefronts-dir": str(split)}
        for run in plan_models(with_split_facts(base)):
            parameters = sum(v.size for v in run.model.initial_weights(run.facts).values())
            measured = {
                encoding: measure_model(
                    run,
                    {**base, "run-dir": str(Path(temporary) / f"run-{encoding}")},
                    node,
                    encoding,
                )
                for encoding in UPDATE_ENCODINGS
            }
            for i, message in enumerate(MESSAGES):
                rows.append(
                    (
                        run.model.name,
                        parameters,
                        message,
                        *(measured[e][i] for e in UPDATE_ENCODINGS),
                    )
                )
    command = " ".join(["python -m lab.benchmarks.wire_bytes", *(argv or sys.argv[1:])])
    print("## Bytes per site and round (train messages)\n")
    print(
        f"Command: `{command.strip()}`; storefront `{args.storefront}` of the bundled data, "
        "main job's run config (DP at ε = 8), round 1; Flower's protobuf serialisation of "
        "the messages as the server's strategy builds them (`server.strategy.training_arrays`, "
        "`facts_record`) and of the real site's reply (`clients.site_task.train_round`).\n"
    )
    print("| model | parameters d | message | float32 bytes | ÷ 4d | int8 bytes | ÷ 4d |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for model, parameters, message, dense, encoded in rows:
        dense_bytes = 4 * parameters
        print(
            f"| {model} | {parameters:,} | {message} | {dense:,} | {dense / dense_bytes:.2f}× | "
            f"{encoded:,} | {encoded / dense_bytes:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
