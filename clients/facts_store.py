"""The shared facts a site has received, kept by digest so the server sends them once per run.

A model's shared facts (the recommender's item catalogue, the churn cutoff) are the same for
every message of a run; the server sends them in full until the site has answered one
message that carried them, then only their digest (:data:`common.wire.FACTS_DIGEST`).
The site therefore keeps what it received: in memory for the process (a simulation worker
answers for many sites, a deployed site for one) and on disk next to its privacy ledger,
``<ledger dir>/shared-facts/<digest>.json`` (a deployed site answers every message in a
fresh ``flwr-clientapp`` process). The facts are the server's non-private data; nothing of
the site's own data is stored here.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from common import wire
from common.atomic_files import atomic_write

FACTS_DIR = "shared-facts"
MEMORY_ENTRIES = 16
"""Digests kept in memory per process: a few models times a few runs."""

_in_memory: OrderedDict[str, dict[str, Any]] = OrderedDict()


def remember_facts(ledger_dir: Path, digest: str, facts: dict[str, Any]) -> None:
    """Keep ``facts`` under ``digest`` in memory and (once) on disk, written atomically."""
    _keep_in_memory(digest, facts)
    path = _facts_path(ledger_dir, digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(facts, sort_keys=True))


def recall_facts(ledger_dir: Path, digest: str) -> dict[str, Any] | None:
    """The facts stored under ``digest``, or ``None`` if this site never received them
    (or its stored copy is unreadable or no longer matches the digest)."""
    if digest in _in_memory:
        _in_memory.move_to_end(digest)
        return _in_memory[digest]
    try:
        facts = json.loads(_facts_path(ledger_dir, digest).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or wire.facts_digest(facts) != digest:
        return None
    _keep_in_memory(digest, facts)
    return facts


def _keep_in_memory(digest: str, facts: dict[str, Any]) -> None:
    _in_memory[digest] = facts
    _in_memory.move_to_end(digest)
    while len(_in_memory) > MEMORY_ENTRIES:
        _in_memory.popitem(last=False)


def _facts_path(ledger_dir: Path, digest: str) -> Path:
    if not digest.isalnum():  # a digest is hex; never a path of the server's choosing
        raise ValueError(f"malformed facts digest {digest[:80]!r}")
    return ledger_dir / FACTS_DIR / f"{digest}.json"
