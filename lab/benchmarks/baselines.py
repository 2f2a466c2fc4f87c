"""Baselines of both fixed protocols on the bundled data, as Markdown for BENCHMARKS.md.

Next basket: the reference baselines of docs/protocols.md overall, outside the UK and per home
storefront (country). Churn: the 5-fold cross-validated references over the whole
population, then the logistic regression and the torch churn MLP (centralized,
non-private, with the comparison's validation-chosen settings) trained on the training
customers and scored on the fixed 20% holdout, overall and per storefront. Run::

    python -m lab.benchmarks.baselines
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from clients.ingest import ingest_table
from lab.compare import fit, non_private_settings
from models import metrics
from models.churn import baselines as churn_baselines
from models.churn.model import MODEL as CHURN
from models.churn.model import ChurnModel, churn_dataset
from models.churn.protocol import churn_data
from models.churn.study import evaluate_churn
from models.recommender import baselines as next_basket_baselines
from models.recommender.protocol import split_next_basket
from simulations.storefronts import BUNDLED_DATA

NEXT_BASKET_COLUMNS = ["customers", "hr@10", "recall@10", "ndcg@10"]
CHURN_COLUMNS = ["customers", "churn-rate", "roc-auc", "pr-auc", "brier"]


def main(argv: list[str] | None = None) -> int:
    """Compute and print the Markdown section; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.baselines")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the churn MLP")
    args = parser.parse_args(argv)
    command = " ".join(["python -m lab.benchmarks.baselines", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    # A fresh key: the tables hold only aggregates, never a token.
    frame, _ = ingest_table(BUNDLED_DATA, secrets.token_bytes(32))

    lines = ["## Baselines (bundled data, fixed protocols)", "", f"Command: `{command}`", ""]
    lines += _next_basket_section(split_next_basket(frame))
    lines += _churn_section(churn_data(frame), args.seed)
    lines += [f"Total time {time.perf_counter() - started:.0f} s.", ""]
    print("\n".join(lines))
    return 0


def _next_basket_section(split) -> list[str]:
    tables = {
        name: next_basket_baselines.evaluate_next_basket(split, scores(split))
        for name, scores in next_basket_baselines.NEXT_BASKET_BASELINES.items()
    }
    overall = pd.DataFrame(
        {
            name: {
                "HR@10": table.loc[metrics.OVERALL, "hr@10"],
                "Recall@10": table.loc[metrics.OVERALL, "recall@10"],
                "NDCG@10": table.loc[metrics.OVERALL, "ndcg@10"],
                "NDCG@10 outside UK": table.loc[metrics.OUTSIDE_UK, "ndcg@10"],
            }
            for name, table in tables.items()
        }
    ).T
    by_storefront = pd.concat(
        {name: table["ndcg@10"] for name, table in tables.items()}, axis=1
    ).rename_axis("storefront")
    by_storefront.insert(0, "test customers", next(iter(tables.values()))["customers"])
    return [
        "### Next basket",
        "",
        f"{len(split.test_customers):,} test customers, "
        f"{int((split.test_storefronts() != metrics.UK).sum())} outside the UK; "
        f"catalogue of {len(split.items):,} items ranked in full.",
        "",
        _markdown(overall.rename_axis("baseline")),
        "",
        "NDCG@10 per home storefront:",
        "",
        _markdown(by_storefront),
        "",
    ]


def _churn_section(data, seed: int) -> list[str]:
    cross_validated = churn_baselines.churn_baselines(data)
    train, held_out = data.part(held_out=False), data.part(held_out=True)
    with threadpool_limits(1):
        regression = churn_baselines.logistic_regression().fit(train.features, train.labels)
    probabilities = regression.predict_proba(held_out.features)[:, 1]
    labels = held_out.labels.to_numpy()
    torch.set_num_threads(1)
    plain = non_private_settings(CHURN.name).training()
    mlp = evaluate_churn(
        fit(CHURN.name, ChurnModel, churn_dataset(train), plain, seed)[0], held_out
    )
    held_out_summary = pd.DataFrame(
        {
            "logistic regression (log1p)": {
                "roc-auc": metrics.roc_auc(probabilities, labels),
                "pr-auc": metrics.pr_auc(probabilities, labels),
                "brier": metrics.brier(probabilities, labels),
            },
            "recency alone": {
                "roc-auc": metrics.roc_auc(held_out.features["recency"], labels),
                "pr-auc": metrics.pr_auc(held_out.features["recency"], labels),
                "brier": float("nan"),
            },
            f"churn MLP (torch, seed {seed})": mlp.loc[
                metrics.OVERALL, ["roc-auc", "pr-auc", "brier"]
            ],
        }
    ).T
    return [
        "### Churn",
        "",
        f"{len(data.labels):,} customers, {data.labels.mean():.1%} churn, cutoff "
        f"{data.cutoff:%Y-%m-%d %H:%M} UTC; {len(labels)} held out.",
        "",
        "5-fold cross-validation over all customers (docs/protocols.md's reference):",
        "",
        _markdown(cross_validated.rename_axis("model")),
        "",
        "Trained on the training customers, scored on the fixed 20% holdout:",
        "",
        _markdown(held_out_summary.rename_axis("model")),
        "",
        "Churn MLP on the holdout per storefront:",
        "",
        _markdown(mlp[CHURN_COLUMNS]),
        "",
    ]


def _markdown(table: pd.DataFrame) -> str:
    """A pipe table: counts as integers, rates to three decimals, NaN as a dash."""
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    for name, values in table.iterrows():
        cells = [_cell(column, value) for column, value in values.items()]
        rows.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(rows)


def _cell(column: str, value: float) -> str:
    if pd.isna(value):
        return "–"
    if column in ("customers", "test customers"):
        return f"{int(value):,}"
    return f"{value:.3f}" if np.isfinite(value) else str(value)


if __name__ == "__main__":
    sys.exit(main())
