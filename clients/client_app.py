"""The fedshop ClientApp: a storefront's answer to the server's train and evaluate messages,
and to the delivery of the final models.

Thin on purpose: the work of a round (data, the site's privacy policy, DP training, the
reply) is in :mod:`clients.site_task`; the wire contract is in :mod:`common.wire`. Under
secure aggregation a train message is a SecAgg+ stage, answered by
:mod:`clients.secure_training`. Installing the delivered models is :mod:`clients.delivery`.
Every reply passes :func:`clients.audit.audit_outgoing`, which can keep a copy of what
leaves the site.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.audit import audit_outgoing
from clients.delivery import install_delivered_bundle
from clients.secure_training import is_secure_aggregation_message, train_with_secure_aggregation
from clients.site_task import evaluate_round, train_round
from common import wire

app = ClientApp(mods=[audit_outgoing])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this site's customers under user-level DP."""
    # Opacus adds a root log handler on import; keep flwr's lines single.
    logging.getLogger("flwr").propagate = False
    if is_secure_aggregation_message(msg):
        return train_with_secure_aggregation(msg, context)
    return train_round(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this site's held-out customers (aggregates only)."""
    return evaluate_round(msg, context)


@app.query(wire.INSTALL_MODEL)
def install_model(msg: Message, context: Context) -> Message:
    """Install the run's final models delivered by the server (checksums checked)."""
    return install_delivered_bundle(msg, context)
