"""What ``python -m lab tune`` searches: the seeded draw of the trials from a model's grid of
values per setting and mode (its research module's ``SEARCH_SPACES``,
:func:`models.study.search_space`).

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

from models.study import search_space


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
    if trials < 1:
        raise ValueError(f"run at least one trial, got {trials}")
    space = search_space(model, mode, private)
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
