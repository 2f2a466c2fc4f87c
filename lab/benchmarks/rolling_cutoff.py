"""Benchmark: the recommender against repeat-buying under a time-respecting evaluation.

Run ``python -m lab.benchmarks.rolling_cutoff``; it prints a Markdown section for
BENCHMARKS.md. The fixed protocol (:mod:`models.recommender.protocol`) trains on every
invoice but each customer's last, so a model scoring a basket of 2011-11 has seen other
customers' December purchases. Here every test basket on or after ``--since`` is
scored by a model trained only on what happened before the week it falls in:

1. the protocol's test baskets (each repeat customer's last invoice) with a first
   timestamp on or after ``--since`` are grouped into 7-day weeks from ``--since``;
2. for each week, the training data are all cleaned purchase lines before the week's
   first day (other customers' earlier test invoices included: they are past by then);
   a fresh centralized recommender (the comparison's non-private settings,
   :func:`lab.compare.non_private_settings`) is trained on them and scores the
   week's test customers from their history before the week;
3. repeat-buying (:func:`models.recommender.baselines.own_history_scores`: the customer's own most
   often bought items, ties by popularity) scores the same customers from the same data.

A test customer with no purchase before their week (all earlier invoices in the same
week) has nothing to rank from; they are left out of both, and counted. The same
customers are also scored by a model trained once on the fixed protocol (static), to
show what the look-ahead is worth. Per-customer NDCG@10 is pooled over all weeks; the
spread is over ``--seeds``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from lab.compare import fit_recommender, ingest_bundled, non_private_settings
from models import metrics, schema
from models.recommender.baselines import own_history_scores
from models.recommender.features import EvaluationExamples, TrainingExamples, build_histories
from models.recommender.model import MODEL as RECOMMENDER
from models.recommender.model import TOP_K, score_examples
from models.recommender.protocol import (
    NextBasketSplit,
    clean_purchases,
    last_invoices,
    split_next_basket,
)

DEFAULT_SINCE = "2011-10-01"
WEEK = timedelta(days=7)
METRIC = f"ndcg@{TOP_K}"


@dataclass(frozen=True)
class Week:
    """One week's test customers and what may be learned before it."""

    start: pd.Timestamp
    split: NextBasketSplit
    """Training lines before ``start``; test baskets of the week's customers that have some."""
    without_history: int
    """Test customers of the week with no purchase before it (left out)."""


def weekly_splits(frame: pd.DataFrame, split: NextBasketSplit, since: datetime) -> list[Week]:
    """The protocol's test baskets on or after ``since``, week by week, each with the
    purchase lines before its week (module docstring); ``split`` is the fixed protocol's
    split of ``frame``."""
    purchases = clean_purchases(frame)
    invoice_start = (
        purchases.groupby([schema.CUSTOMER, schema.ORDER], observed=True)[schema.TIMESTAMP]
        .min()
        .reset_index()
    )
    basket_time = (
        last_invoices(purchases)
        .merge(invoice_start, on=[schema.CUSTOMER, schema.ORDER])
        .set_index(schema.CUSTOMER)[schema.TIMESTAMP]
    )
    start = pd.Timestamp(since)
    late = basket_time[basket_time >= start]
    weeks = []
    week_start = start
    while week_start <= late.max():
        customers = late[(late >= week_start) & (late < week_start + WEEK)].index
        train = purchases[purchases[schema.TIMESTAMP] < week_start].reset_index(drop=True)
        known = customers[customers.isin(train[schema.CUSTOMER].unique())].sort_values()
        if len(customers):
            weeks.append(
                Week(
                    week_start,
                    NextBasketSplit(
                        train=train,
                        test_baskets=split.test_baskets.loc[known],
                        home_storefront=split.home_storefront,
                        items=split.items,
                    ),
                    len(customers) - len(known),
                )
            )
        week_start += WEEK
    return weeks


def model_scores(split: NextBasketSplit, seed: int, epochs: int) -> np.ndarray:
    """Test customers × catalogue scores of a recommender trained on ``split.train``."""
    histories = build_histories(split.train, split.items)
    entry = non_private_settings(RECOMMENDER.name)
    settings = replace(entry.training(), local_epochs=epochs)
    examples = TrainingExamples(histories, seed=seed, target_window=entry.target_window())
    model, _ = fit_recommender(len(split.items), examples, settings, seed)
    return score_examples(model, EvaluationExamples(histories, split.test_baskets, split.items))


def per_customer_ndcg(split: NextBasketSplit, scores: np.ndarray) -> np.ndarray:
    """NDCG@10 of each test customer of ``split`` under ``scores``."""
    top = metrics.top_k_items(scores, TOP_K)
    return metrics.ranking_metrics(top, split.target_matrix(), TOP_K)[METRIC]


def main(argv: list[str] | None = None) -> int:
    """Score every week for each seed and print the Markdown section."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.rolling_cutoff")
    parser.add_argument("--since", default=DEFAULT_SINCE, help="first test day (ISO date)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs",
        type=int,
        default=non_private_settings(RECOMMENDER.name).training().local_epochs,
        help="training epochs (default: the non-private settings')",
    )
    args = parser.parse_args(argv)
    since = datetime.fromisoformat(args.since).replace(tzinfo=UTC)
    command = " ".join(["python -m lab.benchmarks.rolling_cutoff", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    frame = ingest_bundled()
    static_split = split_next_basket(frame)
    weeks = weekly_splits(frame, static_split, since)
    late = pd.Index(np.concatenate([w.split.test_customers.to_numpy() for w in weeks]))
    rows = static_split.test_customers.get_indexer(late)

    repeat = np.concatenate(
        [per_customer_ndcg(w.split, own_history_scores(w.split)) for w in weeks]
    )
    rolling, static = [], []
    per_week: dict[pd.Timestamp, list[float]] = {w.start: [] for w in weeks}
    for seed in args.seeds:
        print(f"[rolling-cutoff] seed {seed}: {len(weeks)} weekly models", file=sys.stderr)
        week_scores = []
        for week in weeks:
            ndcg = per_customer_ndcg(week.split, model_scores(week.split, seed, args.epochs))
            per_week[week.start].append(float(ndcg.mean()))
            week_scores.append(ndcg)
        rolling.append(float(np.concatenate(week_scores).mean()))
        whole = per_customer_ndcg(static_split, model_scores(static_split, seed, args.epochs))
        static.append(float(whole[rows].mean()))

    lines = [
        "## Time-respecting evaluation (weekly rolling cutoff, issue #12)",
        "",
        f"Command: `{command}`; bundled data, test baskets of the fixed protocol on or after "
        f"{args.since}, centralized recommender without DP ({args.epochs} epochs, the "
        f"comparison's settings), seeds {', '.join(map(str, args.seeds))}.",
        "",
        "| week from | test customers | left out (no history before the week) | "
        "recommender NDCG@10 (mean over seeds) | repeat-buying NDCG@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    offset = 0
    for week in weeks:
        count = len(week.split.test_customers)
        repeat_week = repeat[offset : offset + count].mean() if count else float("nan")
        offset += count
        lines.append(
            f"| {week.start.date()} | {count:,} | {week.without_history} | "
            f"{np.mean(per_week[week.start]):.4f} | {repeat_week:.4f} |"
        )
    lines += [
        "",
        "| scored on the same late customers | NDCG@10 | spread over seeds |",
        "|---|---:|---:|",
        f"| recommender, weekly rolling cutoff | {np.mean(rolling):.4f} | "
        f"{min(rolling):.4f}–{max(rolling):.4f} |",
        f"| recommender, fixed protocol (trained once, sees later weeks) | {np.mean(static):.4f} | "
        f"{min(static):.4f}–{max(static):.4f} |",
        f"| repeat-buying, weekly rolling cutoff | {repeat.mean():.4f} | deterministic |",
        "",
        f"{len(late):,} test customers in {len(weeks)} weeks; "
        f"{sum(w.without_history for w in weeks)} left out. "
        f"Total time {time.perf_counter() - started:.0f} s.",
        "",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
