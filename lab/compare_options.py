"""The options of ``python -m lab compare``, declared apart from :mod:`lab.compare`
so that building the command line does not import the training stack."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from simulations.assignments import parse_assignments
from simulations.runner import DEFAULT_CLIENT_CPUS

DEFAULT_EPSILONS: tuple[float, ...] = (1.0, 3.0, 8.0)
COMPARED_MODELS: tuple[str, ...] = ("recommender", "churn")
"""The models a comparison trains by default, in BENCHMARKS.md's order."""


def model_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated model names (built-in, or a plug-in's module path)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"name each model once, comma-separated: {text!r}")
    return names


def epsilon_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated ε targets, each finite and > 0 (``1,3,8``)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not all(0 < value < float("inf") for value in values):
        raise argparse.ArgumentTypeError(f"every ε must be finite and > 0, got {text!r}")
    return values


def seed_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated distinct seeds, each a whole number ≥ 0 (``0,1,2``)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of seeds: {text!r}") from None
    if any(value < 0 for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0, got {text!r}")
    return values


def assignment(text: str) -> tuple[str, Any]:
    """An argparse type: one ``MODEL.KEY=VALUE`` (value a TOML scalar) as ``(key, value)``."""
    try:
        ((key, value),) = parse_assignments([text]).items()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return key, value


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``compare --out DIR [--epsilons 1,3,8] [--seeds 0,1,2] [--quick]
    [--no-federated] [--set MODEL.KEY=VALUE ...]``."""
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument(
        "--epsilons",
        type=epsilon_list,
        default=DEFAULT_EPSILONS,
        help="target ε of the centralized DP runs (default 1,3,8)",
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=(0,),
        help="seeds of the training runs, comma-separated (default 0); with several, each "
        "seed's comparison goes to OUT/seed-<s> and OUT gets their means and spreads",
    )
    parser.add_argument(
        "--models",
        type=model_list,
        default=COMPARED_MODELS,
        help="registered models to compare, comma-separated (default "
        f"{','.join(COMPARED_MODELS)}; a plug-in by its module path)",
    )
    parser.add_argument("--quick", action="store_true", help="few epochs (smoke test)")
    parser.add_argument(
        "--federated",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the federated simulations, non-private and at each ε (default: yes; "
        "each is a real flwr run of a few minutes)",
    )
    parser.add_argument(
        "--set",
        type=assignment,
        action="append",
        default=[],
        metavar="MODEL.KEY=VALUE",
        help="replace a setting of every DP run of a model, whatever its ε (default: the "
        "settings of the nearest ε in models/<model>/settings-per-epsilon.json), e.g. "
        "recommender.learning-rate=1.0 or recommender.target-window=2",
    )
    parser.add_argument(
        "--client-cpus",
        type=int,
        default=DEFAULT_CLIENT_CPUS,
        help=f"CPUs per simulated ClientApp of the federated runs (default {DEFAULT_CLIENT_CPUS})",
    )
