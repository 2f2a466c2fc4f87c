"""A site's train round under secure aggregation (Flower SecAgg+): same DP round, masked reply.

With ``secure-aggregation = true`` the server trains through Flower's legacy SecAgg+
workflow (:mod:`server.secure_aggregation`). A train message is then one of four SecAgg+
stages (setup, share keys, collect masked vectors, unmask), recognised by its
``secaggplus_configs`` record; Flower's ``secaggplus_mod`` runs the protocol and, in the
collect-masked-vectors stage only, calls the site's training. This module adapts that call
to the site's one train round, :func:`clients.site_task.train_round`:

1. the legacy FitIns layout (unnamed arrays ``fitins.parameters``, ``fitins.config``) becomes
   the train message of :mod:`common.wire`; the array names come in the config under
   :data:`common.wire.ARRAY_NAMES`, the shared facts as ``facts.<key>`` entries;
2. ``train_round`` runs unchanged: the privacy gate, user-level DP-SGD (per-customer
   clipping and noise happen *during* local training, on the site) and the ledger commit.
   So the update is already privatised before it is masked;
3. the site checks its own update, since the server no longer can: finite, and small enough
   that SecAgg+'s quantisation does not clip it (``|w - w_global| * weight <= clipping
   range``, the weight being ``num-examples / max-weight`` of the SecAgg+ setup). Otherwise
   the round raises, the site drops out, and SecAgg+ still recovers the others' sum;
4. the reply carries the *update* ``w_site - w_global`` (small values quantise finely) in
   the legacy FitRes layout, with ``num-examples`` as the SecAgg+ weight and the train
   metrics plus the storefront as FitRes metrics; ``secaggplus_mod`` quantises and masks it
   and strips the plain arrays before anything leaves the site.

A site that declines the round (budget spent, no data) sends its usual decline error.
"""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters, fitres_to_recorddict

from clients.site_task import train_round
from common import wire

FITINS_PARAMETERS = "fitins.parameters"
FITINS_CONFIG = "fitins.config"


class UnmaskableUpdate(RuntimeError):
    """The site's update cannot go through SecAgg+ unchanged; the site drops out."""


class _Declined(Exception):
    """Carries a decline reply out of ``secaggplus_mod``, which expects content."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.reason)
        self.error = error


def is_secure_aggregation_message(msg: Message) -> bool:
    """Whether ``msg`` is a stage of the SecAgg+ protocol (else a plain train message)."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def train_with_secure_aggregation(msg: Message, context: Context) -> Message:
    """A site's answer to one SecAgg+ stage; trains in the collect-masked-vectors stage."""
    try:
        return secaggplus_mod(msg, context, masked_train_round)
    except _Declined as declined:
        return Message(declined.error, reply_to=msg)


def masked_train_round(msg: Message, context: Context) -> Message:
    """The site's train round for ``secaggplus_mod``: legacy FitIns in, legacy FitRes out.

    Raises:
        UnmaskableUpdate: the update is non-finite or outside SecAgg+'s quantisation range.
    """
    config = dict(msg.content.config_records[FITINS_CONFIG])
    names = [str(name) for name in config.pop(wire.ARRAY_NAMES)]
    fact_prefix = f"{wire.FACTS}."
    facts = {
        k.removeprefix(fact_prefix): config.pop(k)
        for k in list(config)
        if k.startswith(fact_prefix)
    }
    legacy_arrays = msg.content.array_records[FITINS_PARAMETERS]
    global_arrays = parameters_to_ndarrays(arrayrecord_to_parameters(legacy_arrays, True))
    global_weights = dict(zip(names, global_arrays, strict=True))

    train_msg = copy.copy(msg)  # same metadata, so the reply answers this message
    train_msg.content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in global_weights.items()}),
            wire.CONFIG: ConfigRecord(config),
            wire.FACTS: ConfigRecord(facts),
        }
    )
    reply = train_round(train_msg, context)
    if reply.has_error():
        raise _Declined(reply.error)

    metrics = dict(reply.content[wire.METRICS])
    site = reply.content[wire.SITE]
    trained = {k: v.numpy() for k, v in reply.content[wire.ARRAYS].items()}
    update = [trained[k].astype(np.float64) - global_weights[k] for k in names]
    num_examples = int(metrics[wire.NUM_EXAMPLES])
    secagg = SecAggPlusState(**context.state.config_records[RECORD_KEY_STATE])
    check_maskable(
        update, num_examples, clipping_range=secagg.clipping_range, max_weight=secagg.max_weight
    )

    fitres = FitRes(
        status=Status(Code.OK, ""),
        parameters=ndarrays_to_parameters(update),
        num_examples=num_examples,
        metrics={**metrics, **{key: str(site[key]) for key in wire.SITE_KEYS}},
    )
    return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def check_maskable(
    update: list[np.ndarray], num_examples: int, *, clipping_range: float, max_weight: float
) -> None:
    """Fail closed where SecAgg+ would silently corrupt the sum: non-finite values, or values
    its quantisation would clip (``|update| * num_examples / max_weight > clipping_range``).

    Raises:
        UnmaskableUpdate: with the reason; the site then sits the round out.
    """
    if not all(np.isfinite(values).all() for values in update):
        raise UnmaskableUpdate("the local update is not finite; this site sits the round out")
    weight = num_examples / max_weight
    largest = max((float(np.abs(values).max()) for values in update if values.size), default=0.0)
    if largest * weight > clipping_range:
        raise UnmaskableUpdate(
            f"the local update's largest change {largest:.4g} times its SecAgg+ weight "
            f"{weight:.4g} exceeds the clipping range {clipping_range:g}; this site sits the "
            "round out (lower the learning rate)"
        )
