"""``fedshop-site policy`` and ``fedshop-site privacy-report``: the site's own privacy, locally.

The policy lives in the site's privacy ledger (``<data>/privacy-ledger.sqlite``): `prepare`
sets the defaults once; ``policy --set KEY=VALUE ... --by WHO --reason WHY`` is the only way
to change it — raising a cap included — and every version is kept with who, when and why.
``privacy-report`` recomputes, from the ledger alone, what the site has spent per model,
by the accountant that planned each step, against the policy's caps.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd

from models import schema
from privacy.ledger import LEDGER_FILE, TRAINING, PrivacyLedger, ledger_epsilon
from privacy.planning import accounting_delta, site_delta
from privacy.policy import PolicyError, SitePolicy, from_settings

SETTINGS = {
    "epsilon-cap": "epsilon_cap",
    "max-epsilon-per-run": "max_epsilon_per_run",
    "delta": "delta",
    "dp-required": "dp_required",
    "min-cohort": "min_cohort",
    "evaluation-epsilon": "evaluation_epsilon",
    "max-evaluations-per-run": "max_evaluations_per_run",
    "cohort-noise": "cohort_noise",
    "data-period": "data_period",
    "accountant": "accountant",
    "models": "models",
}
"""Command-line setting -> policy field; ``<model>.epsilon-cap`` sets one model's cap,
``<model>.<bound>`` one of its fact bounds (named by the model)."""


class PolicyCommandError(Exception):
    """A policy command cannot proceed; the message is one line for the user."""


def default_policy(orders: pd.DataFrame) -> SitePolicy:
    """The policy a site starts with for its prepared ``orders``: the defaults, with δ fixed
    from its number of customers (:func:`privacy.planning.site_delta`) and the export's
    first and last day, from which each model derives the bounds of its shared facts."""
    customers = max(int(orders[schema.CUSTOMER].nunique()), 1)
    return SitePolicy(delta=site_delta(customers), data_period=data_period(orders))


def data_period(orders: pd.DataFrame) -> tuple[str, str] | None:
    """The first and last day (UTC, ISO) of ``orders``; ``None`` for no order line."""
    if orders.empty:
        return None
    times = orders[schema.TIMESTAMP].dt.tz_convert("UTC")
    return times.min().date().isoformat(), times.max().date().isoformat()


def ensure_default_policy(data_dir: Path, set_by: str) -> SitePolicy:
    """The site's policy, set to :func:`default_policy` of its prepared orders first if it
    has none (``prepare`` does this)."""
    with PrivacyLedger(Path(data_dir) / LEDGER_FILE) as ledger:
        policy = ledger.policy()
        if policy is None:
            orders = pd.read_parquet(
                Path(data_dir) / schema.ORDERS_FILE, columns=[schema.CUSTOMER, schema.TIMESTAMP]
            )
            policy = default_policy(orders)
            ledger.set_policy(policy, set_by=set_by, reason="the defaults, set at first prepare")
    return policy


def changed_policy(policy: SitePolicy, assignments: list[str]) -> SitePolicy:
    """``policy`` with ``KEY=VALUE`` assignments applied (values in TOML: 12, true, 'pld').

    Raises:
        PolicyCommandError: a malformed assignment, an unknown key or an invalid value.
    """
    changes: dict[str, Any] = {}
    caps = dict(policy.model_epsilon_caps)
    bounds = {model: dict(values) for model, values in policy.fact_bounds.items()}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        key = key.strip()
        if not separator or not key:
            raise PolicyCommandError(f"--set expects KEY=VALUE, got {assignment!r}")
        value = _value(text.strip())
        model, dot, bound = key.rpartition(".")
        if key.endswith(".epsilon-cap"):
            caps[key.removesuffix(".epsilon-cap")] = value
        elif key == "models":
            changes["models"] = tuple(m.strip() for m in str(value).split(",") if m.strip())
        elif key in SETTINGS:
            changes[SETTINGS[key]] = value
        elif dot and model and bound:
            bounds.setdefault(model, {})[bound] = value
        else:
            raise PolicyCommandError(
                f"unknown policy setting {key!r}; settings: {', '.join(SETTINGS)}, "
                "<model>.epsilon-cap, <model>.<fact bound>"
            )
    try:
        return from_settings(policy, {**changes, "model_epsilon_caps": caps, "fact_bounds": bounds})
    except PolicyError as error:
        raise PolicyCommandError(str(error)) from None


def add_policy_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``policy --data DIR [--set KEY=VALUE ... --by WHO --reason WHY]``."""
    parser = subparsers.add_parser(
        "policy", help="show or change this site's privacy policy (every change is recorded)"
    )
    parser.add_argument("--data", type=Path, required=True, help="the prepared directory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"change a setting: {', '.join(SETTINGS)}, <model>.epsilon-cap, "
        "<model>.<fact bound> (e.g. --set <model>.epsilon-cap=12)",
    )
    parser.add_argument("--by", help="who changes the policy (recorded in the ledger)")
    parser.add_argument("--reason", help="why (recorded in the ledger)")
    parser.set_defaults(handler=run_policy)


def run_policy(args: argparse.Namespace) -> int:
    """Show the policy and its history, or record a change to it."""
    path = _ledger_path(args.data)
    with PrivacyLedger(path) as ledger:
        current = ledger.policy()
        if args.set:
            if not (args.by and args.reason):
                raise PolicyCommandError("a policy change needs --by (who) and --reason (why)")
            updated = changed_policy(current or SitePolicy(), args.set)
            ledger.set_policy(updated, set_by=args.by, reason=args.reason)
            print(f"recorded a new privacy policy in {path}")
        history = ledger.policy_history()
    if not history:
        raise PolicyCommandError(f"{path} holds no privacy policy yet; set one with --set")
    print("privacy policy in force:")
    for line in history[-1].policy.describe():
        print(f"  {line}")
    print("history:")
    for change in history:
        print(f"  {change.set_at}  {change.set_by}: {change.reason}")
    return 0


def add_privacy_report_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``privacy-report --data DIR [--json]``."""
    parser = subparsers.add_parser(
        "privacy-report", help="ε spent per model, recomputed from this site's ledger"
    )
    parser.add_argument("--data", type=Path, required=True, help="the prepared directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=run_privacy_report)


def site_privacy_report(data_dir: Path) -> list[dict[str, Any]]:
    """Per model in the ledger: ε spent (by the accountants its segments name, at the
    policy's δ, :func:`privacy.planning.accounting_delta`), and of it on each purpose
    alone (training, cohort sizes, evaluation), δ, DP steps, rounds, runs, the cap."""
    with PrivacyLedger(_ledger_path(data_dir)) as ledger:
        policy = ledger.policy() or SitePolicy()
        rows = []
        for model in ledger.models():
            entries = ledger.entries(model)
            delta = accounting_delta(policy, entries)
            epsilon = ledger_epsilon(entries, delta)
            purposes = sorted({entry.purpose for entry in entries})
            cap = policy.cap_for(model)
            rows.append(
                {
                    "model": model,
                    "epsilon": epsilon,
                    "epsilon-by-purpose": {
                        purpose: ledger_epsilon([e for e in entries if e.purpose == purpose], delta)
                        for purpose in purposes
                    },
                    "delta": delta,
                    "dp-steps": sum(
                        entry.segment.steps for entry in entries if entry.purpose == TRAINING
                    ),
                    "releases": len({e.release_id for e in entries if e.release_id is not None}),
                    "rounds": sum(entry.purpose == TRAINING for entry in entries),
                    "runs": len({entry.run for entry in entries}),
                    "accountants": sorted({entry.accountant for entry in entries}),
                    "epsilon-cap": cap,
                    "epsilon-remaining": max(cap - epsilon, 0.0),
                    "uncommitted": sum(entry.status != "committed" for entry in entries),
                }
            )
    return rows


def run_privacy_report(args: argparse.Namespace) -> int:
    """Print what the site has spent per model."""
    rows = site_privacy_report(args.data)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{_ledger_path(args.data)}: no DP training recorded yet")
    for row in rows:
        print(
            f"{row['model']}: ε {row['epsilon']:.4f} of cap {row['epsilon-cap']:g} "
            f"(δ = {row['delta']:.3g}, {', '.join(row['accountants'])}), "
            f"{row['dp-steps']} DP steps in {row['rounds']} rounds and {row['releases']} "
            f"releases of {row['runs']} runs; ε {row['epsilon-remaining']:.4f} remains; alone: "
            + ", ".join(f"{p} ε {e:.3g}" for p, e in row["epsilon-by-purpose"].items())
            + (f"; {row['uncommitted']} rounds never confirmed" if row["uncommitted"] else "")
        )
    return 0


def _ledger_path(data_dir: Path) -> Path:
    path = Path(data_dir) / LEDGER_FILE
    if not path.is_file():
        raise PolicyCommandError(
            f"{path}: no privacy ledger; prepare the export first (`fedshop-site prepare`)"
        )
    return path


def _value(text: str) -> Any:
    """A TOML scalar if ``text`` parses as one, else the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
