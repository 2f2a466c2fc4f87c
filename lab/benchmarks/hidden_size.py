"""Benchmark: the width of each model's hidden layer, on validation only (issue #12).

Run ``python -m lab.benchmarks.hidden_size``; it prints a Markdown section for
BENCHMARKS.md. The width is architecture the server and every site share, fixed in code
(the recommender's MLP :data:`models.recommender.MLP_HIDDEN`, one layer of 16; churn's
:data:`models.churn.HIDDEN_UNITS`, 8), so the settings file does not carry it and
``python -m lab tune`` does not search it. This checks it where a check is cheapest:
each model trains centralized on its pooled validation data
(:func:`lab.tuning.centralized_objective`; the test split is never read) with
the centralized settings of each ε (ε = 0: the non-private entry), once per width and
training seed. Each row is the headline validation metric (NDCG@10, ROC-AUC): the mean
over seeds and its range.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import pandas as pd

from lab.benchmarks.federated_choices import markdown_row, validation_section
from lab.compare import ingest_bundled
from lab.tuning import centralized_objective
from models.churn.model import HIDDEN_UNITS
from models.recommender.model import MLP_HIDDEN
from models.settings_per_epsilon import CENTRALIZED_MODE, NON_PRIVATE, settings_for
from simulations.storefronts import assign_storefronts

CURRENT = {"recommender": MLP_HIDDEN[0], "churn": HIDDEN_UNITS}
"""Each model's width in code."""
MODELS = tuple(CURRENT)


def validation_scores(
    frame: pd.DataFrame, model: str, epsilon: float, width: int, seeds: Sequence[int]
) -> list[float]:
    """The headline validation metric of ``model`` at ``width`` per training seed, with the
    centralized settings of ``epsilon``."""
    entry = settings_for(model, CENTRALIZED_MODE, epsilon)
    objective = centralized_objective(frame, model, epsilon, list(seeds), hidden_size=width)
    return [seed[entry.metric] for seed in objective(0, entry.settings)]


def main(argv: list[str] | None = None) -> int:
    """Measure every model, ε and width; print the Markdown section."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.hidden_size")
    parser.add_argument(
        "--epsilons", type=float, nargs="+", default=[NON_PRIVATE, 1.0, 8.0], help="0: no DP"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recommender-widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--churn-widths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    command = " ".join(["python -m lab.benchmarks.hidden_size", *(argv or sys.argv[1:])])
    widths = {"recommender": args.recommender_widths, "churn": args.churn_widths}
    started = time.perf_counter()
    frame = assign_storefronts(ingest_bundled())
    rows = []
    for model in args.models:
        for epsilon in args.epsilons:
            for width in widths[model]:
                scores = validation_scores(frame, model, epsilon, width, args.seeds)
                choice = f"width {width}" + (" (current)" if width == CURRENT[model] else "")
                rows.append(markdown_row(model, epsilon, choice, scores))
                print(f"[hidden-size] {rows[-1]}", file=sys.stderr, flush=True)
    description = (
        f"Command: `{command}`; bundled data, each model's validation protocol (the test "
        "split never read), centralized training with the settings file's centralized entry "
        "of each ε (ε = 0: without DP, its non-private entry), training seeds "
        f"{', '.join(map(str, args.seeds))}. Metric: NDCG@10 (recommender), ROC-AUC (churn)."
    )
    heading = "Hidden-layer width on validation (issue #12)"
    print(validation_section(heading, description, rows, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
