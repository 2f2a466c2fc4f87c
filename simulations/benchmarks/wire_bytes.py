"""Benchmark: bytes on the wire per site and round, against the dense float32 parameters.

Run ``python -m simulations.benchmarks.wire_bytes``; it prints a Markdown section for
BENCHMARKS.md. For each model it builds the server's real train instruction (global
weights, training plan, shared facts such as the recommender's catalogue) and one site's
real reply (:func:`clients.site_task.train_round` on a storefront of the bundled data,
DP at ε = 8, so weights plus the fixed metric keys), and measures both as Flower
serialises them (``flwr.common.serde.message_to_proto``), next to ``4 x d`` bytes for
the model's ``d`` parameters. Gzip of the serialised bytes shows how compressible they are.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import tempfile
from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto

from clients.site_task import train_round
from privacy import wire
from server.server_app import plan_models
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.runner import app_run_config, storefront_slugs
from simulations.sequential import server_message
from simulations.storefronts import prepare_bundled_storefronts


def serialised_bytes(message: Message) -> tuple[int, int]:
    """Size of ``message`` as Flower serialises it, and of that gzip-compressed."""
    raw = message_to_proto(message).SerializeToString()
    return len(raw), len(gzip.compress(raw))


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
        config = {
            **app_run_config(),
            **MAIN_RUN_CONFIG,
            "storefronts-dir": str(split),
            "run-dir": str(Path(temporary) / "run"),
        }
        node = slugs.index(args.storefront)
        context = Context(1, node, {"partition-id": node}, RecordDict(), config)
        for run in plan_models(config):
            model, train_config = run.model.name, run.train_config
            weights = run.model.initial_weights(run.facts)
            arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
            parameters = sum(v.size for v in weights.values())
            content = run.content(arrays, {**train_config, wire.SERVER_ROUND: 1})
            sent = server_message(content, "train", node)
            reply = train_round(sent, context)
            if reply.has_error():
                raise SystemExit(f"{model}: the site declined: {reply.error.reason}")
            for direction, message in (("server → site", sent), ("site → server", reply)):
                raw, compressed = serialised_bytes(message)
                rows.append((model, parameters, direction, raw, compressed))
    command = " ".join(["python -m simulations.benchmarks.wire_bytes", *(argv or sys.argv[1:])])
    print("## Bytes per site and round (train messages)\n")
    print(
        f"Command: `{command.strip()}`; storefront `{args.storefront}` of the bundled data, "
        "main job's run config (DP at ε = 8), round 1; Flower's protobuf serialisation.\n"
    )
    print("| model | parameters d | direction | bytes | ÷ 4d (dense float32) | gzip bytes |")
    print("|---|---:|---|---:|---:|---:|")
    for model, parameters, direction, raw, compressed in rows:
        print(
            f"| {model} | {parameters:,} | {direction} | {raw:,} | "
            f"{raw / (4 * parameters):.2f}× | {compressed:,} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
