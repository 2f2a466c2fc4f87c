"""The options of ``python -m lab tune``, declared apart from :mod:`lab.tuning` so that
building the command line does not import the training stack."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import BUILTIN_MODELS
from models.settings_per_epsilon import MODES

DEFAULT_TRIALS = 8
DEFAULT_TUNE_OUT = Path("runs/tune")


def tunable_epsilon(text: str) -> float:
    """An argparse type: a finite ε > 0 (DP), or 0 for the non-private settings."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"ε must be finite and > 0, or 0 for no DP, got {text!r}")
    return value


def setting_names(text: str) -> list[str]:
    """An argparse type: comma-separated setting names in run-config spelling."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"name one or more settings, got {text!r}")
    return names


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``tune --model M --epsilon E --mode MODE [--trials N] [--seed S] [--repeats R]
    [--vary SETTINGS] [--out DIR] [--storefronts DIR] [--write-settings]``."""
    parser.add_argument(
        "--model",
        required=True,
        help="a registered model with a validation split and a search space: "
        f"{', '.join(BUILTIN_MODELS)} or a plug-in's module path",
    )
    parser.add_argument(
        "--epsilon",
        type=tunable_epsilon,
        required=True,
        help="target ε; 0 tunes the non-private runs' settings",
    )
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help=f"settings tried: the current ones, then random draws (default {DEFAULT_TRIALS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws and the training")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="train each trial with this many seeds (--seed, --seed + 1, ...; federated: "
        "the runs' simulation-seed) and score their mean (default 1)",
    )
    parser.add_argument(
        "--vary",
        type=setting_names,
        help="draw only these settings (comma-separated, e.g. target-window), holding the "
        "others at the settings file's entry (default: draw every setting of the space)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_TUNE_OUT,
        help=f"directory for the trial table and the chosen settings (default {DEFAULT_TUNE_OUT})",
    )
    parser.add_argument(
        "--storefronts",
        type=Path,
        help="a storefront split (e.g. from `fedshop-sim synth`) to tune on; default: the "
        "bundled data split into storefronts",
    )
    parser.add_argument(
        "--write-settings",
        action="store_true",
        help="record the chosen settings as this model, mode and ε's entry of "
        "models/<model>/settings-per-epsilon.json",
    )
