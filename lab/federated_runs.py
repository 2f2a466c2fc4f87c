"""The federated runs of the comparison: non-private, and with DP at each target ε.

Each run is a real simulation of the Flower app (:func:`simulations.runner.run_simulation_job`:
``flwr run``, one SuperNode per storefront) on a storefront split of the bundled data,
with the run configs below; its final models' exact metrics on every storefront's held-out
customers (:mod:`simulations.exact_evaluation`: the sites send the server only noisy
estimates) become rows of the comparison tables (:mod:`lab.compare`) in the same
shape as the centralized and storefront-alone runs: ``overall``, ``outside United
Kingdom`` (the per-storefront means pooled by customers) and one row per storefront.

The run configs are those of :mod:`simulations.run_configs`; each run takes its models'
local-training settings from the settings file's federated entries: the non-private
run those of ε = 0, each DP run those of the nearest ε
(:func:`models.settings_per_epsilon.federated_run_config`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.settings_per_epsilon import (
    FEDERATED_MODE,
    NON_PRIVATE,
    federated_run_config,
    settings_epsilon,
    validation_record,
)
from models.training import SIMULATION_SEED
from server.run_results import load_run
from simulations.progress import SILENT, Progress
from simulations.reference_runs import final_rows
from simulations.run_configs import MAIN_RUN_CONFIG, PLAIN_RUN_CONFIG, PLAIN_SITE_POLICY
from simulations.runner import DEFAULT_CLIENT_CPUS, run_simulation_job

FEDERATED = "federated"
"""Name of the non-private federated run."""


def federated_dp_run_name(epsilon: float) -> str:
    """``federated-dp-eps-8`` (integers without a decimal point)."""
    return f"{FEDERATED}-dp-eps-{epsilon:g}"


def federated_references(
    storefronts_dir: Path,
    out_dir: Path,
    epsilons: list[float],
    *,
    models: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    settings_overrides: Mapping[str, Any] | None = None,
    client_cpus: int = DEFAULT_CLIENT_CPUS,
    seed: int = 0,
    progress: Progress = SILENT,
) -> dict[str, dict[str, Any]]:
    """Run the non-private and each DP federated simulation into ``out_dir/<run name>``.

    The non-private run trains with the settings file's non-private federated entries, each
    DP run with those of its nearest ε. ``overrides`` change every run's config (e.g.
    :data:`simulations.run_configs.QUICK_OVERRIDES`); ``settings_overrides``
    (``<model>.<key>``) replace the settings per ε of the DP runs;
    ``seed`` is every run's ``simulation-seed``; ``models`` the models trained (default: the
    main job's).

    Returns:
        model -> run name -> ``{"training": run config, "metrics": rows by group}``.
    """
    models = list(models or str(MAIN_RUN_CONFIG["models"]).split(","))
    plain = {
        **PLAIN_RUN_CONFIG,
        "models": ",".join(models),
        **federated_run_config(models, NON_PRIVATE),
        **(overrides or {}),
    }
    configs = {FEDERATED: (plain, PLAIN_SITE_POLICY)}
    for epsilon in epsilons:
        tuned = federated_run_config(models, epsilon, settings_overrides)
        dp_config = {**MAIN_RUN_CONFIG, "models": ",".join(models), **tuned, **(overrides or {})}
        dp_config["epsilon"] = epsilon
        configs[federated_dp_run_name(epsilon)] = (dp_config, [])
    runs: dict[str, dict[str, Any]] = {}
    for name, (run_config, site_policy) in configs.items():
        run_config = {**run_config, SIMULATION_SEED: seed}
        run_dir = out_dir / name
        if run_dir.is_dir():
            shutil.rmtree(run_dir)  # an earlier comparison's run: train afresh
        with progress.step(f"{name}: flwr run on {storefronts_dir.name}"):
            run_simulation_job(
                storefronts_dir,
                run_dir,
                run_config=run_config,
                client_cpus=client_cpus,
                site_policy=site_policy,
            )
        results = load_run(run_dir)
        epsilon = settings_epsilon(run_config["epsilon"])
        overridden = settings_overrides if epsilon != NON_PRIVATE else None
        for model in results.rounds:
            runs.setdefault(model, {})[name] = {
                "training": run_config,
                "metrics": final_rows(results.scored(model), model),
                "validation": validation_record(model, FEDERATED_MODE, epsilon, overridden),
            }
    return runs
