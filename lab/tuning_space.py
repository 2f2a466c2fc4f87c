"""What ``python -m lab tune`` searches: a grid of values per setting for each model and mode,
and the seeded draw of the trials from it.

Each setting has a short list of values (learning rates on a rough geometric grid around
the current ones), so the trial table reads plainly and a seed fixes the whole search.
Trial 0 is always the current entry of the settings file, so the search never chooses
something that scored worse on validation than what runs use today. A search may vary only
some settings and hold the others at the current entry's values (a coordinate step, e.g.
the federated recommender's ``target-window`` alone). Federated spaces hold no round count
(one value for all models of a run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SEARCH_SPACES: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {
    ("recommender", "centralized"): {
        "local-epochs": (10, 20, 30),
        "optimizer": ("momentum",),
        "learning-rate": (0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0),
        "batch-size": (250, 500, 1000),
        "max-grad-norm": (0.03, 0.1, 0.3, 1.0),
        "target-window": (1, 2, 3, "all"),
    },
    # ε = 1's first search chose the grid's edge in three settings (lr 2, batch 1,000,
    # clip 0.3): the grid goes one step further each way.
    ("recommender", "federated"): {
        "local-epochs": (1, 2, 3, 5, 8),
        "optimizer": ("momentum",),
        "learning-rate": (0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 12.0),
        "batch-size": (250, 500, 1000, 2000),
        "max-grad-norm": (0.03, 0.1, 0.3, 1.0),
        "target-window": (1, 2, 3, "all"),
    },
    ("churn", "centralized"): {
        "local-epochs": (20, 40, 80),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03, 0.1),
        "batch-size": (64, 128, 256, 512),
        "max-grad-norm": (0.3, 1.0, 3.0),
    },
    # The first searches chose 4 epochs and clip 0.3, both edges: one step further.
    ("churn", "federated"): {
        "local-epochs": (1, 2, 4, 8),
        "optimizer": ("sgd",),
        "learning-rate": (0.02, 0.05, 0.1, 0.2, 0.5),
        "batch-size": (32, 64, 128),
        "max-grad-norm": (0.1, 0.3, 1.0, 3.0),
    },
}
"""Per (model, mode): setting (run-config spelling) -> the values tried under DP."""

NON_PRIVATE_SPACES: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {
    ("recommender", "centralized"): {
        "local-epochs": (10, 20, 40),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03),
        "batch-size": (32, 64, 128, 256),
        "max-grad-norm": (1.0,),
        "target-window": (1, 2, 3, "all"),
    },
    ("recommender", "federated"): {
        "local-epochs": (1, 2, 5, 10),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03),
        "batch-size": (32, 64, 128, 256),
        "max-grad-norm": (1.0,),
        "target-window": (1, 2, 3, "all"),
    },
    # 4,096 holds every training customer of the bundled data: full-batch Adam.
    ("churn", "centralized"): {
        "local-epochs": (50, 100, 300, 600),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03, 0.1),
        "batch-size": (64, 256, 1024, 4096),
        "max-grad-norm": (1.0,),
    },
    ("churn", "federated"): {
        "local-epochs": (1, 2, 4, 8),
        "optimizer": ("sgd",),
        "learning-rate": (0.02, 0.05, 0.1, 0.2, 0.5),
        "batch-size": (32, 64, 128),
        "max-grad-norm": (1.0,),
    },
}
"""Per (model, mode): the values tried without DP (``max-grad-norm`` is unused there and
held at one value)."""


def draw_trials(
    model: str,
    mode: str,
    current: Mapping[str, Any],
    trials: int,
    seed: int,
    vary: Sequence[str] | None = None,
    *,
    private: bool = True,
) -> list[dict[str, Any]]:
    """The settings of ``trials`` trials: ``current`` first, then distinct draws from the
    model and mode's space, under DP or not (``private``; uniform per setting, seeded;
    fewer if the space runs out). With ``vary``, only those settings are drawn; the others
    keep ``current``'s values.

    Raises:
        ValueError: no space for the model and mode, ``trials`` < 1, or ``vary`` names a
            setting outside the space.
    """
    spaces = SEARCH_SPACES if private else NON_PRIVATE_SPACES
    if (model, mode) not in spaces:
        raise ValueError(f"no search space for {model} in {mode} mode")
    if trials < 1:
        raise ValueError(f"run at least one trial, got {trials}")
    space = spaces[(model, mode)]
    if vary is not None:
        unknown = sorted(set(vary) - set(space))
        if unknown or not vary:
            raise ValueError(
                f"vary one or more of {', '.join(space)} for {model} in {mode} mode, "
                f"got {', '.join(unknown) or 'none'}"
            )
        space = {name: values for name, values in space.items() if name in vary}
    size = int(np.prod([len(values) for values in space.values()]))
    chosen = [dict(current)]
    drawn: set[tuple[tuple[str, str], ...]] = set()
    draw = np.random.default_rng(seed)
    while len(chosen) < trials and len(drawn) < size:
        candidate = {
            **current,
            **{name: values[draw.integers(len(values))] for name, values in space.items()},
        }
        key = _key(candidate)
        if key not in drawn:
            drawn.add(key)
            if key != _key(current):
                chosen.append(candidate)
    return chosen


def _key(settings: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, repr(value)) for name, value in settings.items()))
