"""The privacy report of a simulated run: ε, δ and DP steps per site and model.

ε is recomputed here, independently of what the sites reported, from each simulated site's
privacy ledger (``<run-dir>/sites/<slug>/privacy-ledger.sqlite``): all of the ledger's
segments — DP-SGD steps and releases (cohort sizes, evaluations) — go through the
accountant each segment names (:func:`privacy.ledger.ledger_epsilon`) at the site's δ
(:func:`privacy.planning.accounting_delta`), and its evaluation releases alone give the
ε the site spent on evaluation. The result is checked
against the ε and steps the site last reported to the server (``rounds.jsonl``):

- ``match``: ledger and report agree (to rounding).
- ``ledger-higher``: the ledger holds reservations never confirmed (a round crashed
  after reserving); the ledger over-counts, as designed, and the ledger's ε is the one
  that holds.
- ``mismatch``: anything else, e.g. a site reporting less than its ledger proves. A
  report with a mismatch fails closed (:class:`PrivacyReportError`) once written.

Beside each site's ε stands what the strongest membership-inference attacker of the audit
(``python -m lab.benchmarks.membership``, summarised in
:data:`MEMBERSHIP_AUDIT`) achieved on the bundled data at the audited ε nearest at or
above that spend: a reading of what the number means, not a bound for other data.

The report is written to ``<run-dir>/privacy_report.json``
(:func:`server.privacy_report.write_privacy_report`), replacing the one the ServerApp
wrote from the sites' reports alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from clients.site_releases import EVALUATION
from common import wire
from privacy.ledger import LEDGER_FILE, TRAINING, PrivacyLedger, ledger_epsilon
from server.privacy_report import SitePrivacy, write_privacy_report
from server.run_files import RESOLVED_CONFIG, ROUNDS_LOG
from server.server_app import site_privacy
from simulations.errors import PrivacyReportError
from simulations.storefronts import INDEX_FILE

SITES_DIR = "sites"
RELATIVE_TOLERANCE = 1e-9
MEMBERSHIP_AUDIT = Path(__file__).resolve().parent / "data" / "membership-audit.json"
"""The membership audit's strongest attack per model and ε (its ``--json`` output)."""


def privacy_report(run_dir: Path) -> list[SitePrivacy]:
    """Every simulated site's privacy spend per model, recomputed and checked.

    Sites are listed per model, in the order of the run's storefront split. A site that
    never trained a model (declined, or no data) appears with 0 steps and ε = 0.
    """
    run_dir = Path(run_dir)
    storefronts = _storefront_names(run_dir)
    records = _round_records(run_dir)
    reported = site_privacy(records)
    models = [m.strip() for m in str(_run_config(run_dir).get("models", "")).split(",")]
    audit = _strongest_attacks()
    rows = []
    for model in [m for m in models if m]:
        for slug, name in storefronts.items():
            row = _site_privacy(run_dir, model, slug, name, reported.get(model, {}))
            rows.append(replace(row, attack=attack_at(audit, model, row.epsilon)))
    return rows


def attack_at(strongest: list[dict[str, Any]], model: str, epsilon: float) -> str:
    """The audit's strongest attack on ``model`` at the smallest audited ε at or above
    ``epsilon`` (the non-private targets beyond the largest), in words; "" if none."""
    audited = [a for a in strongest if a["model"] == model]
    private = sorted((a for a in audited if a["epsilon"] is not None), key=lambda a: a["epsilon"])
    above = [a for a in private if a["epsilon"] >= epsilon - 1e-6]
    chosen = above[0] if above else next((a for a in audited if a["epsilon"] is None), None)
    if chosen is None or epsilon <= 0:
        return ""
    at = "no DP" if chosen["epsilon"] is None else f"ε {chosen['epsilon']:g}"
    return (
        f"{chosen['attack']} on the {chosen['training']} model at {at}: "
        f"ROC-AUC {chosen['roc-auc']:.3f}, TPR {chosen['tpr-at-low-fpr']:.3f} at "
        f"{chosen['low-fpr']:.0%} FPR"
    )


def _strongest_attacks() -> list[dict[str, Any]]:
    if not MEMBERSHIP_AUDIT.is_file():
        return []
    return json.loads(MEMBERSHIP_AUDIT.read_text())["strongest"]


def write_ledger_privacy_report(run_dir: Path) -> Path:
    """Write ``privacy_report.json`` for ``run_dir`` from the ledgers; returns its path.

    Raises:
        PrivacyReportError: after writing, if any site's ledger contradicts its report.
    """
    rows = privacy_report(run_dir)
    path = write_privacy_report(run_dir, rows, _round_records(run_dir))
    bad = [f"{row.storefront} ({row.model})" for row in rows if row.check == "mismatch"]
    if bad:
        raise PrivacyReportError(
            f"reported ε or steps contradict the privacy ledger for {', '.join(bad)}; see {path}"
        )
    return path


def _site_privacy(
    run_dir: Path, model: str, slug: str, name: str, reported: dict[str, dict[str, float]]
) -> SitePrivacy:
    ledger_file = run_dir / SITES_DIR / slug / LEDGER_FILE
    entries = []
    if ledger_file.is_file():
        with PrivacyLedger(ledger_file) as ledger:
            entries = ledger.entries(model)
    report = reported.get(name)
    deltas = {entry.delta for entry in entries}
    if len(deltas) > 1:  # a site's δ is fixed in its policy; two values mean a broken ledger
        raise PrivacyReportError(f"{ledger_file}: entries for {model} use several δ {deltas}")
    delta = deltas.pop() if deltas else float(report["delta"]) if report else math.nan
    training = [entry for entry in entries if entry.purpose == TRAINING]
    epsilon = ledger_epsilon(entries, delta)
    steps = sum(entry.segment.steps for entry in training)
    uncommitted = sum(entry.status != "committed" for entry in entries)
    last = training[-1] if training else None
    evaluated = [entry for entry in entries if entry.purpose == EVALUATION]
    reported_epsilon = float(report["epsilon"]) if report else None
    # A site that only evaluated (it declined training) reported no DP-SGD step.
    reported_steps = int(report.get(wire.DP_STEPS, 0)) if report else None
    return SitePrivacy(
        model=model,
        storefront=name,
        slug=slug,
        epsilon=epsilon,
        accountant=",".join(sorted({entry.accountant for entry in entries})),
        delta=delta,
        dp_steps=steps,
        rounds=len(training),
        budget_epsilon=last.budget_epsilon if last else math.nan,
        noise_multiplier=last.segment.noise_multiplier if last else math.nan,
        sample_rate=last.segment.sample_rate if last else math.nan,
        uncommitted=uncommitted,
        reported_epsilon=reported_epsilon,
        reported_dp_steps=reported_steps,
        check=_check(epsilon, steps, uncommitted, reported_epsilon, reported_steps),
        privacy_note=str(report.get(wire.PRIVACY_NOTE, "")) if report else "",
        evaluation_epsilon=ledger_epsilon(evaluated, delta) if evaluated else 0.0,
        releases=len({entry.release_id for entry in entries if entry.release_id is not None}),
    )


def _check(
    epsilon: float,
    steps: int,
    uncommitted: int,
    reported_epsilon: float | None,
    reported_steps: int | None,
) -> str:
    if reported_epsilon is None or reported_steps is None:
        return "match" if steps == 0 else "ledger-higher" if uncommitted else "mismatch"
    if reported_steps == steps and math.isclose(
        reported_epsilon, epsilon, rel_tol=RELATIVE_TOLERANCE
    ):
        return "match"
    if uncommitted and reported_steps <= steps and reported_epsilon <= epsilon:
        return "ledger-higher"
    return "mismatch"


def _storefront_names(run_dir: Path) -> dict[str, str]:
    """slug -> storefront name of the run's split, in partition (sorted slug) order."""
    index_file = Path(str(_run_config(run_dir)["storefronts-dir"])) / INDEX_FILE
    index = json.loads(index_file.read_text())
    names = {entry["slug"]: entry["name"] for entry in index["storefronts"]}
    return dict(sorted(names.items()))


def _run_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RESOLVED_CONFIG).read_text())


def _round_records(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / ROUNDS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
