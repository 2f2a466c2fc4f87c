"""Build Flower train replies as a site would send them, for server-side tests."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from common import wire


def train_metrics(num_examples: int = 100, noise_multiplier: float = 1.0) -> dict[str, float]:
    """A complete, valid train MetricRecord payload."""
    return {
        wire.NUM_EXAMPLES: num_examples,
        wire.EPSILON: 1.0,
        wire.DELTA: 1e-5,
        wire.DP_STEPS: 10,
        wire.NOISE_MULTIPLIER: noise_multiplier,
    }


def reply(
    node_id: int,
    weights: dict[str, np.ndarray] | None = None,
    *,
    storefront: str = "",
    metrics: dict[str, float] | None = None,
    error: Error | None = None,
) -> Message:
    """A train reply from ``node_id`` carrying ``weights`` (or an error)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=f"instruction-{node_id}",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    if error is not None:
        return Message(error=error, metadata=metadata)
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}),
            wire.METRICS: MetricRecord(metrics or train_metrics()),
            wire.SITE: ConfigRecord(
                {wire.STOREFRONT: storefront or f"site-{node_id}", wire.PRIVACY_NOTE: ""}
            ),
        }
    )
    return Message(content=content, metadata=metadata)


class NodeList:
    """The part of a Flower Grid that sampling reads: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)
