"""Progress of a run as machine-readable log lines: what a console shows of a federation.

The ServerApp logs one line when a round's stage starts and one when the round ends,
each ``fedshop-progress <JSON>``, among Flower's own log lines. ``fedshop-sim`` reads them
from the stream of ``flwr run`` and prints a ticker and one summary line per round and
model (:func:`round_line`), while everything else goes to the run's log file;
``fedshop-server submit`` can do the same. Nothing here is per customer: counts of sites,
the largest ε a site reported, and the pooled headline metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from logging import INFO
from typing import Any

MARKER = "fedshop-progress "


@dataclass(frozen=True)
class RoundEvent:
    """A stage of a round starting (``stage`` training or evaluating), or a round ending
    (``stage`` done, with its outcome)."""

    model: str
    round: int
    rounds: int
    stage: str
    sites: int = 0
    """Sites sent a message in this stage (start events)."""
    accepted: int = 0
    declined: int = 0
    failed: int = 0
    rejected: int = 0
    epsilon: float | None = None
    """The largest cumulative ε a site reported (``None``: no site trained under DP)."""
    metric: str = ""
    value: float | None = None
    """The model's headline metric after the round, pooled over all sites."""
    kept_previous_model: bool = False


def report(event: RoundEvent) -> None:
    """Log ``event`` as one marker line on Flower's log (the ServerApp's output stream)."""
    # Imported here: the console side (parse, round_line) runs where Flower is not loaded.
    from flwr.supercore import log

    log(INFO, "%s%s", MARKER, json.dumps(asdict(event), allow_nan=True))


def parse(line: str) -> RoundEvent | None:
    """The event of a log line, or ``None`` if the line carries none."""
    start = line.find(MARKER)
    if start < 0:
        return None
    try:
        return RoundEvent(**json.loads(line[start + len(MARKER) :]))
    except (json.JSONDecodeError, TypeError):
        return None


def round_finished(
    model: str, rounds: int, headline_metric: str, record: dict[str, Any]
) -> RoundEvent:
    """The end-of-round event of a round record (``rounds.jsonl``)."""
    epsilons = [
        float(privacy["epsilon"])
        for privacy in record.get("privacy", {}).values()
        if math.isfinite(float(privacy.get("epsilon", math.inf)))
    ]
    value = record.get("evaluate-metrics", {}).get(headline_metric)
    return RoundEvent(
        model=model,
        round=int(record["round"]),
        rounds=rounds,
        stage="done",
        accepted=len(record.get("accepted", [])),
        declined=len(record.get("declined", [])),
        failed=len(record.get("failed", [])),
        rejected=len(record.get("rejected", [])),
        epsilon=max(epsilons) if epsilons else None,
        metric=headline_metric,
        value=None if value is None else float(value),
        kept_previous_model=bool(record.get("kept-previous-model", False)),
    )


def round_line(event: RoundEvent, seconds: float | None = None) -> str:
    """One console line for a finished round, e.g. ``churn round 2/4: 7 sites accepted,
    0 declined, 0 failed · ε ≤ 3.99 · roc-auc 0.712 · 14.2 s``."""
    sites = f"{event.accepted} sites accepted, {event.declined} declined, {event.failed} failed"
    if event.rejected:
        sites += f", {event.rejected} rejected"
    parts = [f"{event.model} round {event.round}/{event.rounds}: {sites}"]
    if event.epsilon is not None:
        parts.append(f"ε ≤ {event.epsilon:.3g}")
    elif event.accepted:
        parts.append("no DP")
    if event.value is not None and math.isfinite(event.value):
        parts.append(f"{event.metric} {event.value:.4f}")
    if event.kept_previous_model:
        parts.append("previous model kept")
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return " · ".join(parts)


def stage_line(event: RoundEvent) -> str:
    """A short ticker text for a stage that started, e.g. ``churn round 2/4: training at
    7 sites``."""
    return f"{event.model} round {event.round}/{event.rounds}: {event.stage} at {event.sites} sites"
