"""Benchmark: model utility when each privacy accountant plans the DP noise (PLD vs RDP).

Run ``python -m lab.benchmarks.accountants``; it prints a Markdown section for
BENCHMARKS.md. On the storefront split of the bundled data, for every accountant
(``--accountants``, default ``rdp,pld``) and every ε per site and model (``--epsilons``,
default ``1,3,8``), it trains the main job's run config
(:data:`simulations.run_configs.MAIN_RUN_CONFIG`, with that ``epsilon``, ``--rounds``
server rounds if given, and every site's privacy policy naming that ``accountant``) by
:func:`lab.sequential.run_sequential_federation` — the sites' real code (DP
planning, privacy ledgers) and FedAvg, site after site in this process, with the same
per-site seeds in every run — and records:

- the pooled metric after the last round: recommender ``ndcg@10``, churn ``roc-auc``;
- per model, the noise multiplier σ the United Kingdom site and the smallest site
  trained with, read from their privacy ledgers;
- per model, the largest ε any site's ledger holds, recomputed from its segments by the
  accountant(s) they name at the site's δ (:func:`privacy.ledger.ledger_epsilon`).

Progress goes to stderr; stdout is only the Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.sequential import run_sequential_federation
from privacy.accountants import ACCOUNTANTS
from privacy.ledger import LEDGER_FILE, PrivacyLedger, ledger_epsilon
from simulations.progress import Progress
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.runner import storefront_slugs
from simulations.site_policies import apply_site_policy
from simulations.storefronts import INDEX_FILE, prepare_bundled_storefronts

METRICS = {"recommender": "ndcg@10", "churn": "roc-auc"}
"""The model measured, and the pooled metric reported for it after the last round."""
MODELS = tuple(METRICS)
UK = "united-kingdom"
"""Slug of the United Kingdom storefront (the largest site)."""
SITES_DIR = "sites"
"""Where a simulated run keeps each site's ledger: ``<run dir>/sites/<slug>/``."""


@dataclass(frozen=True)
class SiteSpend:
    """What one site's ledger holds for one model."""

    noise_multiplier: float
    """σ of its segments (nan if it never trained the model)."""
    epsilon: float
    """ε of its segments, by the accountant(s) they name, at its δ."""
    delta: float
    accountants: str
    rounds: int


@dataclass
class Measurement:
    """One federated run: an accountant at an ε."""

    epsilon: float
    accountant: str
    seconds: float
    metrics: dict[str, float]
    """Per model, the pooled metric of :data:`METRICS` after the last round."""
    sites: dict[str, dict[str, SiteSpend]] = field(default_factory=dict)
    """Per model and site slug, its ledger's spend."""
    declined: dict[str, list[str]] = field(default_factory=dict)

    def sigma(self, model: str, slug: str) -> float:
        """σ the site ``slug`` trained ``model`` with (nan if it never trained it)."""
        spend = self.sites[model].get(slug)
        return spend.noise_multiplier if spend else math.nan

    def max_epsilon(self, model: str) -> float:
        """The largest ε any site's ledger holds for ``model``."""
        return max((s.epsilon for s in self.sites[model].values()), default=math.nan)


def site_spend(ledger_file: Path, model: str) -> SiteSpend | None:
    """σ and ε of ``model`` in the ledger at ``ledger_file`` (None without segments).

    Raises:
        ValueError: the model's segments use several σ or several δ (every round of a
            site trains with the σ calibrated once for its whole plan).
    """
    if not ledger_file.is_file():
        return None
    with PrivacyLedger(ledger_file) as ledger:
        entries = ledger.entries(model)
    if not entries:
        return None
    sigmas = {entry.segment.noise_multiplier for entry in entries}
    deltas = {entry.delta for entry in entries}
    if len(sigmas) > 1 or len(deltas) > 1:
        raise ValueError(f"{ledger_file}: {model} segments use σ {sigmas} and δ {deltas}")
    delta = deltas.pop()
    return SiteSpend(
        noise_multiplier=sigmas.pop(),
        epsilon=ledger_epsilon(entries, delta),
        delta=delta,
        accountants=",".join(sorted({entry.accountant for entry in entries})),
        rounds=len(entries),
    )


def measure(
    split: Path,
    run_dir: Path,
    run_config: dict[str, Any],
    accountant: str,
    progress: Progress,
) -> Measurement:
    """Train ``run_config``, every site planning with ``accountant`` (its privacy policy),
    and read the ledgers."""
    epsilon = float(run_config["epsilon"])
    apply_site_policy(split, run_dir, [f"accountant='{accountant}'"], set_by="accountants")
    result = run_sequential_federation(split, run_dir, run_config, progress=progress)
    measurement = Measurement(
        epsilon=epsilon,
        accountant=accountant,
        seconds=result.seconds,
        metrics={m: float(result.metrics[m][-1].get(METRICS[m], math.nan)) for m in MODELS},
        declined={m: list(result.declined.get(m, [])) for m in MODELS},
    )
    for model in MODELS:
        measurement.sites[model] = {}
        for slug in storefront_slugs(split):
            spend = site_spend(run_dir / SITES_DIR / slug / LEDGER_FILE, model)
            if spend is not None:
                measurement.sites[model][slug] = spend
    return measurement


def storefront_names(split: Path) -> dict[str, tuple[str, int]]:
    """Per slug of the split, the storefront's name and its number of customers."""
    index = json.loads((split / INDEX_FILE).read_text())
    return {s["slug"]: (s["name"], int(s["customers"])) for s in index["storefronts"]}


def takeaway(measurements: list[Measurement], epsilons: list[float]) -> str:
    """One sentence comparing PLD with RDP at each ε, from the measured numbers."""
    by_key = {(m.epsilon, m.accountant): m for m in measurements}
    pairs = [
        (eps, by_key[(eps, "rdp")], by_key[(eps, "pld")])
        for eps in epsilons
        if (eps, "rdp") in by_key and (eps, "pld") in by_key
    ]
    if not pairs:
        return "Only one accountant was measured, so there is no PLD-vs-RDP comparison."

    def joined(values: list[str]) -> str:
        return " / ".join(values)

    def less_noise(model: str) -> str:
        return joined(
            [f"{1 - pld.sigma(model, UK) / rdp.sigma(model, UK):.1%}" for _, rdp, pld in pairs]
        )

    def change(model: str) -> str:
        return joined([_signed(pld.metrics[model] - rdp.metrics[model]) for _, rdp, pld in pairs])

    return (
        f"At ε = {joined([f'{eps:g}' for eps, _, _ in pairs])}, PLD plans "
        f"{less_noise('recommender')} smaller σ than RDP for the UK recommender "
        f"({less_noise('churn')} for churn), which changes recommender NDCG@10 by "
        f"{change('recommender')} and churn ROC-AUC by {change('churn')} (PLD − RDP; one "
        "run each, with the same per-site seeds)."
    )


def _parse_epsilons(text: str) -> list[float]:
    epsilons = [float(part) for part in text.split(",") if part.strip()]
    if not epsilons or not all(math.isfinite(e) and e > 0 for e in epsilons):
        raise argparse.ArgumentTypeError(f"need positive, finite ε values, got {text!r}")
    return epsilons


def _parse_accountants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ACCOUNTANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"need accountants among {sorted(ACCOUNTANTS)}, got {text!r}"
        )
    return names


def _signed(difference: float) -> str:
    """A metric difference to four decimals, with no sign when it rounds to zero."""
    if math.isnan(difference):
        return "—"
    text = f"{difference:+.4f}"
    return "0.0000" if float(text) == 0 else text


def _pair(first: float, second: float, fmt: str) -> str:
    return " / ".join("—" if math.isnan(v) else format(v, fmt) for v in (first, second))


def _value(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    """Train every (ε, accountant) and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epsilons",
        type=_parse_epsilons,
        default="1,3,8",
        help="comma-separated ε per site and model (default: 1,3,8)",
    )
    parser.add_argument(
        "--accountants",
        type=_parse_accountants,
        default="rdp,pld",
        help=f"comma-separated accountants among {sorted(ACCOUNTANTS)} (default: rdp,pld)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=MAIN_RUN_CONFIG["num-server-rounds"],
        help="server rounds (default: the main job's)",
    )
    args = parser.parse_args(argv)
    shared_config = {**MAIN_RUN_CONFIG, "num-server-rounds": args.rounds}
    logging.getLogger("flwr").propagate = False
    progress = Progress(prog="accountants")
    measurements: list[Measurement] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="accountants-") as temporary:
        work = Path(temporary)
        split = work / "storefronts"
        prepare_bundled_storefronts(split, progress=progress)
        names = storefront_names(split)
        if UK not in names:
            raise SystemExit(f"the split has no {UK!r} storefront: {sorted(names)}")
        smallest = min(names, key=lambda slug: (names[slug][1], slug))
        for epsilon in args.epsilons:
            for accountant in args.accountants:
                label = f"ε={epsilon:g} {accountant}"
                with progress.step(f"run {len(measurements) + 1}: {label}"):
                    run_dir = work / f"run-eps{epsilon:g}-{accountant}"
                    run_config = {**shared_config, "epsilon": epsilon}
                    measurements.append(measure(split, run_dir, run_config, accountant, progress))
    seconds = time.perf_counter() - began

    command = " ".join(
        ["python -m lab.benchmarks.accountants", *(sys.argv[1:] if argv is None else argv)]
    )
    smallest_name, smallest_customers = names[smallest]
    print("## Utility by privacy accountant (PLD vs RDP)\n")
    print(
        f"Command: `{command.strip()}`; the main job's run config "
        f"({', '.join(f'{k}={v}' for k, v in shared_config.items() if k != 'epsilon')}) "
        "with ε per site and model and the accountant that plans σ as in the table; "
        "sequential in-process federation (the same site code, DP ledgers and FedAvg as "
        f"the simulation) on the bundled storefronts, {len(names)} sites; metrics pooled "
        f"over all sites after the last round; {len(measurements)} runs in "
        f"{seconds / 60:.1f} min. σ is read from the sites' privacy ledgers; max ε spent "
        "is the largest ε any site's ledger holds, recomputed by the accountant it names "
        f"at the site's δ. Smallest site: {smallest_name} ({smallest_customers} "
        "customers).\n"
    )
    print(
        "| ε | accountant | recommender NDCG@10 | churn ROC-AUC | σ UK (recommender) "
        f"| σ UK (churn) | σ {smallest_name} (recommender / churn) "
        "| max ε spent (recommender / churn) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for m in measurements:
        print(
            f"| {m.epsilon:g} | {m.accountant} | {_value(m.metrics['recommender'], '.3f')} "
            f"| {_value(m.metrics['churn'], '.3f')} "
            f"| {_value(m.sigma('recommender', UK), '.3f')} "
            f"| {_value(m.sigma('churn', UK), '.3f')} "
            f"| {_pair(m.sigma('recommender', smallest), m.sigma('churn', smallest), '.3f')} "
            f"| {_pair(m.max_epsilon('recommender'), m.max_epsilon('churn'), '.2f')} |"
        )
    print(f"\n{takeaway(measurements, args.epsilons)}")
    declined = [
        f"ε={m.epsilon:g} {m.accountant} {model} round {line}"
        for m in measurements
        for model, lines in m.declined.items()
        for line in lines
    ]
    if declined:
        print("\nDeclined or failed site replies: " + "; ".join(declined) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
