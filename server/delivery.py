"""Delivery of a run's final models: every site receives the model bundle and installs it.

After the bundle is exported (:mod:`server.bundle`), :func:`deliver_bundle` sends every
connected node one query message (action :data:`common.wire.INSTALL_MODEL`) carrying
the bundle's files — the manifest, with the SHA-256 of every weight file, and the weight
files — and waits for the acknowledgements. The site checks the checksums and installs
the models next to its data. A site that cannot install (a checksum that does not match,
a full disk, a ClientApp without the handler) or does not answer is logged and named in
the record, never fatal: the run is over and its bundle is on disk, from which a site can
still install with ``fedshop-site install-model``.

The record, ``<run-dir>/delivery.json``, names the storefronts that acknowledged and the
nodes that did not (by node id and reason).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from common import wire
from common.atomic_files import atomic_write
from server.run_files import DELIVERY_LOG


@dataclass
class DeliveryReport:
    """Which sites installed the delivered bundle and which did not."""

    sent: int = 0
    """Nodes the bundle was sent to."""
    installed: list[str] = field(default_factory=list)
    """Storefronts that acknowledged the install, sorted."""
    failed: list[str] = field(default_factory=list)
    """``node <id>: <reason>`` for every node that replied with an error or not at all."""


def deliver_bundle(
    grid: Grid, bundle_dir: Path, run_dir: Path, *, timeout: float
) -> DeliveryReport:
    """Send the bundle in ``bundle_dir`` to every connected node, wait up to ``timeout``
    seconds for the acknowledgements, and write ``<run_dir>/delivery.json``."""
    files = {path.name: path.read_bytes() for path in sorted(Path(bundle_dir).iterdir())}
    content = RecordDict({wire.BUNDLE: ConfigRecord(files)})
    messages = [
        Message(
            content=content,
            message_type=f"{MessageType.QUERY}.{wire.INSTALL_MODEL}",
            dst_node_id=node_id,
        )
        for node_id in sorted(grid.get_node_ids())
    ]
    log(INFO, "Delivering the model bundle to %d sites", len(messages))
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    report = DeliveryReport(sent=len(messages))
    node_of = {sent.metadata.message_id: sent.metadata.dst_node_id for sent in messages}
    answered = set()
    for reply in replies:
        node_id = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        answered.add(node_id)
        storefront, problem = _acknowledgement(reply)
        if problem is None:
            report.installed.append(storefront)
        else:
            report.failed.append(f"node {node_id}: {problem}")
    report.failed += [
        f"node {msg.metadata.dst_node_id}: no reply within {timeout:.0f} s"
        for msg in messages
        if msg.metadata.dst_node_id not in answered
    ]
    report.installed.sort()
    for failure in report.failed:
        log(WARNING, "Model delivery failed at %s", failure)
    log(INFO, "Model bundle installed by %d of %d sites", len(report.installed), report.sent)
    atomic_write(Path(run_dir) / DELIVERY_LOG, json.dumps(asdict(report), indent=2))
    return report


def _acknowledgement(reply: Message) -> tuple[str, str | None]:
    """(storefront, None) for a valid acknowledgement, else ("", what is wrong)."""
    if reply.has_error():
        return "", f"error {reply.error.code} {reply.error.reason}"
    metrics = reply.content.metric_records.get(wire.METRICS)
    site = reply.content.config_records.get(wire.SITE)
    keys = set(metrics) if metrics is not None else set()
    if keys != wire.INSTALL_REPLY_METRIC_KEYS or site is None or wire.STOREFRONT not in site:
        return "", f"malformed acknowledgement (metric keys {sorted(keys)})"
    return str(site[wire.STOREFRONT]), None
