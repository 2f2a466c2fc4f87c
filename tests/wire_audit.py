"""Checks of what left the sites: the audit copies every site keeps of each reply it sends.

Each file under an audit directory is one message as Flower serialised it for the wire
(:mod:`clients.audit`). :func:`check_sent_messages` reads them all back and asserts that
each holds only the records and keys of the wire contract (:mod:`common.wire` and the
models' own evaluation keys), arrays of exactly the models' weight names and shapes (once
decoded, where a reply carries an 8-bit update), and
that no customer token, raw customer id or order id appears anywhere in its bytes outside
the weight arrays' payloads. Given the sites' ledgers it checks values too: every number
an evaluate reply carries about customers, and every ``num-examples``, is the recorded
answer of a release in a site's ledger (:mod:`privacy.release`), so no value about the
customers left a site unaccounted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import Message
from flwr.common.serde import message_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from clients.site_releases import COHORT, EVALUATION
from common import wire
from common.wire_encoding import decode_int8
from models.registry import get_model
from privacy.ledger import PrivacyLedger

FLOWER_MESSAGE_ID = re.compile(r"[0-9a-f]{64}|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
"""How Flower 1.42 names a message: a SHA-256 hex digest (deployment) or a UUID
(simulation)."""


def read_sent(audit_dir: Path) -> list[tuple[Path, bytes]]:
    """Every audit copy under ``audit_dir`` (recursively) with its raw bytes."""
    return [(path, path.read_bytes()) for path in sorted(Path(audit_dir).rglob("*.pb"))]


def searchable_bytes(proto: ProtoMessage, message: Message) -> bytes:
    """The bytes of one sent message in which no customer or order value may appear.

    Left out: the weight payloads, checked as arrays instead (names, shapes, dtype), since
    float32 bytes spell a short digit string now and then; and Flower's own message ids
    (:data:`FLOWER_MESSAGE_ID`), whose 32 or 64 random hex digits spell one of a synthetic
    site's 6-digit order ids about once in 300 ids. The ids are checked to be exactly
    such ids (or empty), so nothing else can hide in them.
    """
    stripped = ProtoMessage()
    stripped.CopyFrom(proto)
    for field in ("message_id", "reply_to_message_id"):
        value = getattr(stripped.metadata, field)
        assert value == "" or FLOWER_MESSAGE_ID.fullmatch(value), f"{field} {value!r}"
        setattr(stripped.metadata, field, "")
    text = stripped.SerializeToString()
    if not message.has_error():
        for record in message.content.array_records.values():
            for array in record.values():
                text = text.replace(array.data, b"")
    return text


def check_sent_messages(
    audit_dir: Path,
    *,
    facts: Mapping[str, Mapping],
    secrets: Iterable[str],
    min_cohort: int = 20,
    ledgers: Iterable[Path] = (),
) -> Counter:
    """Assert every message under ``audit_dir`` keeps to the contract (module docstring).

    Args:
        facts: the shared facts of each model trained (name -> facts), to know the shapes.
        secrets: strings that must appear in no message (customer tokens, raw ids, order
            ids).
        min_cohort: the sites' minimum cohort: no evaluation reply covers fewer customers.
        ledgers: the sites' privacy ledgers; when given, every released value must be one
            of their recorded release answers.

    Returns:
        How many messages of each kind were checked (``train``, ``evaluate``,
        ``install``: a delivery's acknowledgement, ``refused``).
    """
    shapes = {
        name: {
            key: tuple(value.shape) for key, value in get_model(name).build(f).state_dict().items()
        }
        for name, f in facts.items()
    }
    evaluation_keys = {name: get_model(name).evaluate_metric_keys for name in facts}
    recorded = recorded_answers(ledgers)
    needles = [secret.encode() for secret in set(secrets) if len(secret) >= 4]
    kinds: Counter = Counter()
    sent = read_sent(audit_dir)
    assert sent, f"no audit copy under {audit_dir}"
    for path, raw in sent:
        proto = ProtoMessage()
        proto.ParseFromString(raw)
        message = message_from_proto(proto)
        searched = searchable_bytes(proto, message)
        leaked = [needle for needle in needles if needle in searched]
        assert not leaked, f"{path}: carries {len(leaked)} customer or order values"
        if message.has_error():
            code, reason = message.error.code, message.error.reason
            assert code in wire.DECLINE_REASONS, f"{path}: error {code} ({reason})"
            assert wire.storefront_of_reason(reason) is not None, f"{path}: {reason!r}"
            kinds["refused"] += 1
            continue
        content = message.content
        site = content.config_records[wire.SITE]
        assert set(site) == wire.SITE_KEYS and set(content.config_records) == {wire.SITE}, path
        metrics = dict(content.metric_records[wire.METRICS])
        assert set(content.metric_records) == {wire.METRICS}, path
        if content.array_records:
            assert set(content.array_records) == {wire.ARRAYS}, path
            assert set(metrics) == wire.TRAIN_METRIC_KEYS, f"{path}: {sorted(metrics)}"
            arrays = decode_int8({k: v.numpy() for k, v in content[wire.ARRAYS].items()})
            found = {k: tuple(v.shape) for k, v in arrays.items()}
            assert found in shapes.values(), f"{path}: arrays {found}"
            assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in arrays.values())
            if recorded:
                sizes = {int(answer[COHORT][0]) for answer in recorded[COHORT]}
                assert metrics[wire.NUM_EXAMPLES] in sizes, f"{path}: unrecorded num-examples"
            kinds["train"] += 1
        elif set(metrics) == wire.INSTALL_REPLY_METRIC_KEYS:
            kinds["install"] += 1
        else:
            assert set(metrics) in [set(keys) for keys in evaluation_keys.values()], (
                f"{path}: {sorted(metrics)}"
            )
            assert metrics[wire.NUM_EXAMPLES] >= min_cohort, path
            if recorded:
                answers = {
                    k: v for k, v in metrics.items() if k not in wire.EVALUATION_RELEASE_KEYS
                }
                assert answers in recorded[EVALUATION], f"{path}: answers no release recorded"
                held_out = {answer[COHORT][1] for answer in recorded[COHORT]}
                assert metrics[wire.NUM_EXAMPLES] in held_out, f"{path}: unrecorded num-examples"
            kinds["evaluate"] += 1
    return kinds


def recorded_answers(ledgers: Iterable[Path]) -> dict[str, list[dict]]:
    """Every recorded release answer of the ``ledgers``, by purpose."""
    answers: dict[str, list[dict]] = {}
    for path in ledgers:
        with PrivacyLedger(path) as ledger:
            for model in ledger.models():
                for release in ledger.releases(model):
                    if release.answer is not None:
                        answers.setdefault(release.purpose, []).append(release.answer)
    return answers
