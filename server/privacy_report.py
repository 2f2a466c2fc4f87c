"""The privacy report of a run, ``<run-dir>/privacy_report.json``: per site and model, what
it spent, and every refusal and suppressed evaluation.

Rows are :class:`SitePrivacy`. The server writes them from what the sites *reported*
(:func:`reported_privacy`: the server never sees a ledger; each site recomputes its own
with ``fedshop-site privacy-report``, and the two agree); a simulation, which holds every
simulated site's ledger, writes them recomputed from the ledgers and checked against the
reports (:mod:`simulations.privacy_report`). Either way the file also lists, per model and
round, the sites that declined (with their reasons) and whose evaluation was suppressed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import wire
from common.atomic_files import atomic_write
from privacy.accountants import create_accountant

PRIVACY_REPORT = "privacy_report.json"
REPORTED = "reported"
"""The ``check`` of a row the server wrote: the site's own report, no ledger to check."""


@dataclass(frozen=True)
class SitePrivacy:
    """One site's privacy spend for one model."""

    model: str
    storefront: str
    slug: str
    epsilon: float
    """ε: recomputed from the ledger by the accountant(s) its segments name (simulation),
    or as the site last reported it (deployment)."""
    accountant: str
    """The accountant(s) named by the segments, comma-separated ("" where unknown)."""
    delta: float
    dp_steps: int
    rounds: int
    budget_epsilon: float
    """The ε the site's latest plan allowed the model to reach (≤ its policy's cap)."""
    noise_multiplier: float
    sample_rate: float
    uncommitted: int
    reported_epsilon: float | None
    reported_dp_steps: int | None
    check: str
    """``match``, ``ledger-higher`` or ``mismatch`` (simulation), or ``reported``."""
    privacy_note: str = ""
    """The site's last note on the run (e.g. why it planned a request down)."""
    evaluation_epsilon: float = 0.0
    """The ε of the run's evaluation releases alone (at the same δ; in ``epsilon`` composed
    with everything else)."""
    releases: int = 0
    """The site's releases of the model (cohort sizes, evaluations; 0 where unknown)."""
    attack: str = ""
    """What the strongest membership-inference attacker achieved on the bundled data at the
    audited ε nearest at or above this spend ("" where not known: a deployment)."""


def reported_privacy(round_records: list[dict[str, Any]]) -> list[SitePrivacy]:
    """Rows from the sites' reports in ``round_records`` (``rounds.jsonl``): each site's
    latest report per model (its train reply, or its evaluate reply after it), and in how
    many rounds it trained."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    rounds: dict[tuple[str, str], int] = {}
    for record in round_records:
        for storefront, reported in record.get("privacy", {}).items():
            key = (record["model"], storefront)
            latest[key] = {**latest.get(key, {}), **reported}
            rounds[key] = rounds.get(key, 0) + (wire.DP_STEPS in reported)
    rows = []
    for (model, storefront), reported in sorted(latest.items()):
        epsilon = float(reported.get(wire.EPSILON, math.nan))
        steps = int(reported.get(wire.DP_STEPS, 0))
        rows.append(
            SitePrivacy(
                model=model,
                storefront=storefront,
                slug="",
                epsilon=epsilon,
                accountant="",
                delta=float(reported.get(wire.DELTA, math.nan)),
                dp_steps=steps,
                rounds=rounds[(model, storefront)],
                budget_epsilon=math.nan,
                noise_multiplier=float(reported.get(wire.NOISE_MULTIPLIER, math.nan)),
                sample_rate=math.nan,
                uncommitted=0,
                reported_epsilon=epsilon,
                reported_dp_steps=steps,
                check=REPORTED,
                privacy_note=str(reported.get(wire.PRIVACY_NOTE, "")),
                evaluation_epsilon=float(reported.get(wire.EVALUATION_EPSILON, 0.0)),
            )
        )
    return rows


def refusals(round_records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per model and round: the declined and failed sites, with their reasons, and the
    storefronts whose evaluation was suppressed or refused."""
    kinds = ("declined", "failed", "suppressed", "evaluation-refused")
    return {
        kind: [
            {"model": record["model"], "round": record["round"], "reason": reason}
            for record in round_records
            for reason in record.get(kind, [])
        ]
        for kind in kinds
    }


def write_privacy_report(
    run_dir: Path, rows: list[SitePrivacy], round_records: list[dict[str, Any]]
) -> Path:
    """Write ``privacy_report.json`` (rows, the accountants they name, refusals); its path."""
    used = sorted({name for row in rows for name in row.accountant.split(",") if name})
    payload = {
        "accountants": {name: create_accountant(name).description for name in used},
        "sites": [asdict(row) for row in rows],
        **refusals(round_records),
    }
    path = Path(run_dir) / PRIVACY_REPORT
    atomic_write(path, json.dumps(payload, indent=2) + "\n")
    return path


def load_privacy_report(run_dir: Path) -> list[SitePrivacy]:
    """The rows of ``<run_dir>/privacy_report.json``."""
    payload = json.loads((Path(run_dir) / PRIVACY_REPORT).read_text())
    return [SitePrivacy(**row) for row in payload["sites"]]
