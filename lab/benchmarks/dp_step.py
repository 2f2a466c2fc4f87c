"""Benchmark: cost of one user-level DP-SGD step of the recommender ÷ one non-private step.

Run ``python -m lab.benchmarks.dp_step``; it prints a Markdown section for
BENCHMARKS.md. Same model, same batches (customers of the bundled data's next-basket
protocol, one example each), same Adam optimizer. The step modes are timed interleaved,
batch by batch, so load from other processes hits them alike; each figure is a median over
many steps after warm-up. Target: DP ÷ non-private ≤ 1.5.

Modes:

- ``non-private``: forward, backward, optimizer step;
- ``dp-hooks``: Opacus per-example gradients with this project's grad samplers
  (:mod:`models.recommender.layers`), clipping, noise;
- ``dp-ghost``: Opacus ghost clipping (two backward passes) with this project's norm
  samplers;
- ``dp-output``: per-example gradients from the logit gradient (:mod:`privacy.dp`'s
  ``"output"`` mode: one backward pass to the logits, the same grad samplers fed without
  hooks), Opacus's clipping and noise — what training uses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from clients.ingest import ingest_table
from models.recommender.features import (
    NextBasketBatch,
    TrainingExamples,
    build_histories,
    collate_examples,
)
from models.recommender.layers import register_grad_samplers
from models.recommender.model import DPConfig, NextBasketRecommender, basket_loss
from models.recommender.protocol import split_next_basket
from privacy.dp import DPTrainingSession
from privacy.pseudonymise import generate_key, load_key
from simulations.storefronts import BUNDLED_DATA

TARGET_RATIO = 1.5
MODES = ("non-private", "dp-hooks", "dp-ghost", "dp-output")
TRAINING_MODE = f"dp-{DPConfig.grad_sample_mode}"


def training_examples() -> tuple[TrainingExamples, int]:
    """The bundled data's protocol training examples and the catalogue size."""
    with tempfile.TemporaryDirectory() as directory:
        key_path = Path(directory) / "site.key"
        generate_key(key_path)
        frame, _ = ingest_table(BUNDLED_DATA, load_key(key_path))
    split = split_next_basket(frame)
    return TrainingExamples(build_histories(split.train, split.items)), len(split.items)


def stepper(
    mode: str, dataset: TrainingExamples, num_items: int, batch_size: int
) -> Callable[[NextBasketBatch], None]:
    """One training step of a fresh model in ``mode`` (see the module docstring)."""
    register_grad_samplers()
    model = NextBasketRecommender(num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if mode == "non-private":

        def step(batch: NextBasketBatch) -> None:
            optimizer.zero_grad(set_to_none=True)
            basket_loss(model, batch).mean().backward()
            optimizer.step()

        return step
    session = DPTrainingSession(
        model,
        optimizer,
        dataset,
        batch_size=batch_size,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        loss_fn=basket_loss,
        grad_sample_mode=mode.removeprefix("dp-"),
        output_grad_samples=NextBasketRecommender.per_example_gradients,
        collate_fn=collate_examples,
        seed=0,
    )
    return session.step


def median_step_seconds(
    dataset: TrainingExamples, num_items: int, batch_size: int, batches: int, rounds: int
) -> dict[str, float]:
    """Median seconds per step of each mode over ``rounds`` × ``batches`` interleaved steps."""
    draw = torch.Generator().manual_seed(0)
    sample = [
        collate_examples(
            [dataset[i] for i in torch.randperm(len(dataset), generator=draw)[:batch_size]]
        )
        for _ in range(batches)
    ]
    steps = {mode: stepper(mode, dataset, num_items, batch_size) for mode in MODES}
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(rounds + 1):  # round 0 warms up
        for batch in sample:
            for mode, step in steps.items():
                began = time.perf_counter()
                step(batch)
                if round_index > 0:
                    seconds[mode].append(time.perf_counter() - began)
    return {mode: statistics.median(values) for mode, values in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    """Time the step modes at each batch size and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, default=5, help="distinct batches per round")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds after warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset, num_items = training_examples()
    model = NextBasketRecommender(num_items)
    parameters = sum(p.numel() for p in model.parameters())
    command = " ".join(["python -m lab.benchmarks.dp_step", *(argv or sys.argv[1:])])
    print("## DP training step cost (recommender)\n")
    print(
        f"Command: `{command.strip()}`; {args.threads} torch thread(s); median of "
        f"{args.rounds} × {args.batches} interleaved steps per mode after one warm-up round.\n"
    )
    print(
        f"Model: `NextBasketRecommender({num_items})` — item bias ({num_items}) + MLP "
        f"(one hidden layer of 16) over packed personal features; {parameters:,} "
        f"parameters. Data: {len(dataset):,} training customers of the bundled protocol; "
        "Adam; DP with σ = 1, C = 1 (Poisson-sampled loader built, fixed batches timed).\n"
    )
    print(
        "DP modes (`privacy.dp`), all clipping each example to C and adding Opacus's noise: "
        "`dp-hooks`, Opacus's hooks materialise per-example gradients with the model's grad "
        "samplers; `dp-ghost`, Opacus ghost clipping (per-example norms, then a second "
        "backward pass); `dp-output`, one backward pass to the logits only, the same grad "
        "samplers fed from the logit gradient, clipped and noised by Opacus's `DPOptimizer`.\n"
    )
    print("| batch | mode | ms per step | ÷ non-private |")
    print("|---:|---|---:|---:|")
    worst = 0.0
    for batch_size in args.batch_sizes:
        medians = median_step_seconds(dataset, num_items, batch_size, args.batches, args.rounds)
        base = medians["non-private"]
        for mode in MODES:
            ratio = medians[mode] / base
            if mode == TRAINING_MODE:
                worst = max(worst, ratio)
            print(f"| {batch_size} | {mode} | {1000 * medians[mode]:.1f} | {ratio:.2f}× |")
    verdict = "meets" if worst <= TARGET_RATIO else "misses"
    print(
        f"\nTraining uses `{TRAINING_MODE}`: worst ratio {worst:.2f}× {verdict} "
        f"the ≤ {TARGET_RATIO}× target."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
