"""An audit copy of everything a site sends: every reply, serialised as it leaves.

A ClientApp mod (:func:`audit_outgoing`) that sits outside every handler, so it sees the
final reply — after the site's own checks, after SecAgg+'s masking — and writes it as
Flower serialises it for the wire (``message_to_proto``), one file per message, before
handing it on. A site's data-protection officer can then read exactly what left, and
the project's wire tests check those files for any key beyond the contract and any
customer value.

Where: a deployed site names its audit directory itself (``fedshop-site join
--audit-dir DIR``, node config ``audit-dir``); a server's run config can never make a
site write files. A simulated site (whose node config Flower fills) takes the run
config's ``audit-dir``, set by the researcher who runs every simulated site. Empty: no
copy is kept.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import message_to_proto

from clients.site_data import AUDIT_DIR, DATA_PATH, PARTITION_ID
from common.atomic_files import atomic_write

_SEQUENCE = itertools.count()


def audit_outgoing(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer ``msg``, and keep a copy of the reply in the audit directory, if one is set."""
    reply = call_next(msg, context)
    directory = audit_directory(context)
    if directory is not None:
        name = (
            f"{os.getpid()}-{next(_SEQUENCE):06d}-node{context.node_id}-"
            f"{msg.metadata.message_type}.pb"
        )
        atomic_write(directory / name, message_to_proto(reply).SerializeToString())
    return reply


def audit_directory(context: Context) -> Path | None:
    """The site's audit directory (see the module docstring), or ``None``."""
    configured = str(context.node_config.get(AUDIT_DIR, "")).strip()
    simulated = PARTITION_ID in context.node_config and DATA_PATH not in context.node_config
    if not configured and simulated:
        configured = str(context.run_config.get(AUDIT_DIR, "")).strip()
    return Path(configured) if configured else None
