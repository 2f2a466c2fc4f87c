"""The wire audit's own check: where it looks for customer and order values, and where not."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from wire_audit import check_sent_messages

from common import wire

ORDER_ID = "500123"


def _install_reply(storefront: str, directory: Path, *, reply_to_id: str) -> None:
    """Write one delivery acknowledgement, as a site's audit copy, answering ``reply_to_id``."""
    content = RecordDict(
        {
            wire.SITE: ConfigRecord({wire.STOREFRONT: storefront, wire.PRIVACY_NOTE: ""}),
            wire.METRICS: MetricRecord({wire.MODELS_INSTALLED: 1}),
        }
    )
    metadata = ProtoMetadata(
        run_id=1, reply_to_message_id=reply_to_id, message_type="query.install_model"
    )
    proto = ProtoMessage(metadata=metadata, content=recorddict_to_proto(content))
    directory.mkdir(exist_ok=True)
    (directory / "reply.pb").write_bytes(proto.SerializeToString())


def _check(directory: Path) -> dict:
    return check_sent_messages(directory, facts={}, secrets={ORDER_ID})


def test_an_order_id_spelt_by_flowers_message_id_is_no_leak_but_one_in_the_content_is(
    tmp_path: Path,
) -> None:
    digest = ("ab" + ORDER_ID).ljust(64, "f")
    _install_reply("storefront-0", tmp_path / "id", reply_to_id=digest)
    assert _check(tmp_path / "id") == {"install": 1}

    _install_reply(f"storefront-{ORDER_ID}", tmp_path / "content", reply_to_id=digest)
    with pytest.raises(AssertionError, match="carries 1 customer or order values"):
        _check(tmp_path / "content")

    uuid = f"ab{ORDER_ID}-0000-4000-8000-000000000000"  # a simulation's message id
    _install_reply("storefront-0", tmp_path / "uuid", reply_to_id=uuid)
    assert _check(tmp_path / "uuid") == {"install": 1}

    # an id that is not a digest could carry anything, so it is not let through unsearched
    _install_reply("storefront-0", tmp_path / "not-an-id", reply_to_id=f"order {ORDER_ID}")
    with pytest.raises(AssertionError, match="reply_to_message_id"):
        _check(tmp_path / "not-an-id")
