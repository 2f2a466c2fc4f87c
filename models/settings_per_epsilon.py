"""The training settings per model, mode and ε, with where they came from: the one source
every run reads, simulated or deployed.

Each model package's ``models/<name>/settings-per-epsilon.json`` (:func:`settings_file`)
holds, for each mode (centralized / federated, :data:`MODES`) and target ε, an entry: the
settings in run-config spelling (``local-epochs``, ``optimizer``, ``learning-rate``,
``batch-size``, ``max-grad-norm``, and for the recommender ``target-window``), the
validation score they reached, the split they were chosen on (``chosen-on``), the data,
seeds and trials of that search, and a note. ``python -m lab tune --write-settings``
writes an entry. The ServerApp trains every federated run — ``fedshop-sim run``/``main``
and ``fedshop-server submit`` alike — with the federated entry of the nearest ε for each
setting its run config leaves empty (:func:`server.server_app.model_training_plan`), and
``compare`` reads the centralized ones; a run config value (``--set``, ``--run-config``)
overrides an entry's.

The non-private runs have entries too, under ε = :data:`NON_PRIVATE` (0, as the run config
spells "no DP"); they are read only for training without DP, never as the nearest ε of a
DP run.

An entry never tuned says so: ``chosen-on`` is :data:`UNTUNED`, and its note says how the
values were picked before (some by hand on the test score, before a validation split
existed). Federated entries carry no round count: ``num-server-rounds`` is one value for
all the models of a run. A model without a file (a plug-in) trains with its own defaults.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import wire
from common.atomic_files import atomic_write
from models.recommender.protocol import TARGET_WINDOW, parse_target_window

if TYPE_CHECKING:  # torch underneath: the light command lines read this module too
    from models.training import TrainingSettings

MODELS_DIR = Path(__file__).resolve().parent
"""Where the model packages, each with its settings file, live."""
SETTINGS_NAME = "settings-per-epsilon.json"
CENTRALIZED_MODE = "centralized"
FEDERATED_MODE = "federated"
MODES: tuple[str, ...] = (CENTRALIZED_MODE, FEDERATED_MODE)
"""How a model is trained: on the pooled data in one process, or federated over the
storefronts (the sites' own code, DP planning and ledgers, FedAvg)."""
NON_PRIVATE = 0.0
"""The ε of the entries for training without DP (the run config's ``epsilon = 0``)."""
UNTUNED = "none (current defaults, not yet tuned)"
"""``chosen-on`` of an entry that no tuning chose."""


@dataclass(frozen=True)
class EpsilonSettings:
    """One entry of the settings file (see the module docstring)."""

    model: str
    mode: str
    epsilon: float
    settings: dict[str, Any]
    """Run-config spelling: the keys of :data:`common.wire.MODEL_TRAINING_KEYS`, and
    :data:`TARGET_WINDOW` where it applies."""
    metric: str
    """The validation metric of :attr:`validation_score` (e.g. ``ndcg@10``)."""
    validation_score: float | None
    chosen_on: str
    """The split the settings were chosen on, or :data:`UNTUNED`."""
    data: str | None = None
    """What the search ran on (e.g. ``bundled``), None if untuned."""
    seeds: list[int] = field(default_factory=list)
    """Centralized: the training seeds each trial's score is the mean over. Federated: the
    seed of the draws (the simulation seeds every site per site and round)."""
    trials: int = 0
    note: str = ""

    def training(self) -> TrainingSettings:
        """The five local-training knobs as :class:`models.training.TrainingSettings`."""
        return training_settings(self.settings)

    def target_window(self) -> int | None:
        """The recommender's target window (see :func:`target_window`)."""
        return target_window(self.settings)

    def run_config(self) -> dict[str, Any]:
        """The entry's local-training knobs, and its target window where it has one, as
        run-config keys ``<model>.<key>``."""
        return {
            f"{self.model}.{key}": self.settings[key]
            for key in (*wire.MODEL_TRAINING_KEYS, TARGET_WINDOW)
            if key in self.settings
        }

    def with_overrides(self, overrides: Mapping[str, Any]) -> EpsilonSettings:
        """The entry with the settings of ``overrides`` (run-config keys ``<model>.<key>``;
        other models' keys are ignored) replacing its own."""
        prefix = f"{self.model}."
        own = {k[len(prefix) :]: v for k, v in overrides.items() if k.startswith(prefix)}
        return replace(self, settings={**self.settings, **own}) if own else self


def training_settings(settings: Mapping[str, Any]) -> TrainingSettings:
    """The five local-training knobs of settings in run-config spelling.

    Raises:
        ValueError: a knob is missing or invalid.
    """
    from models.training import TrainingSettings

    return TrainingSettings.from_config(settings, defaults=None)


def target_window(settings: Mapping[str, Any]) -> int | None:
    """The recommender's target window of settings in run-config spelling
    (:func:`models.recommender.features.parse_target_window`; the default when they set none)."""
    return parse_target_window(settings.get(TARGET_WINDOW, ""))


def settings_file(model: str, root: Path = MODELS_DIR) -> Path:
    """Model ``model``'s settings file: ``<root>/<model>/settings-per-epsilon.json``."""
    return Path(root) / model / SETTINGS_NAME


def load_entries(root: Path = MODELS_DIR) -> list[EpsilonSettings]:
    """Every entry of every model package's settings file under ``root``.

    Raises:
        ValueError: a file cannot be read or an entry is malformed.
    """
    return [
        entry
        for path in sorted(Path(root).glob(f"*/{SETTINGS_NAME}"))
        for entry in _read_entries(path)
    ]


def _read_entries(path: Path) -> list[EpsilonSettings]:
    model = path.parent.name
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = [
            EpsilonSettings(
                model=model,
                mode=mode,
                epsilon=float(epsilon),
                **{key.replace("-", "_"): value for key, value in entry.items()},
            )
            for mode, by_epsilon in document["modes"].items()
            for epsilon, entry in by_epsilon.items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable settings file ({error})") from None
    unknown = sorted({entry.mode for entry in entries} - set(MODES))
    if unknown:
        raise ValueError(f"{path}: unknown mode(s) {unknown}; modes are {list(MODES)}")
    return entries


def settings_epsilon(run_epsilon: float) -> float:
    """The ε whose entries a run asking its sites for ``run_epsilon`` trains with: that ε
    under DP, :data:`NON_PRIVATE` for the run config's "no DP" (any ε ≤ 0)."""
    return max(float(run_epsilon), NON_PRIVATE)


def settings_for(model: str, mode: str, epsilon: float, root: Path = MODELS_DIR) -> EpsilonSettings:
    """The entry of ``model`` and ``mode`` whose ε is nearest to ``epsilon`` (a tie goes to
    the smaller ε, tuned for more noise); for ``epsilon`` = :data:`NON_PRIVATE`, the
    non-private entry.

    Raises:
        ValueError: ``epsilon`` is neither > 0 nor :data:`NON_PRIVATE`, or the file has no
            such entry for the model and mode.
    """
    if not (epsilon > 0 or epsilon == NON_PRIVATE):
        raise ValueError(f"settings are for ε > 0 (DP) or ε = 0 (no DP), got ε = {epsilon}")
    private = epsilon > 0
    candidates = [
        entry
        for entry in load_entries(root)
        if entry.model == model and entry.mode == mode and (entry.epsilon > 0) == private
    ]
    if not candidates:
        kind = "DP" if private else "non-private"
        where = settings_file(model, root)
        raise ValueError(f"{where}: no {mode} {kind} settings for the model {model!r}")
    return min(candidates, key=lambda entry: (abs(entry.epsilon - epsilon), entry.epsilon))


def validation_record(
    model: str,
    mode: str,
    epsilon: float,
    overrides: Mapping[str, Any] | None = None,
    root: Path = MODELS_DIR,
) -> dict[str, Any] | None:
    """How the settings a DP run at ``epsilon`` trains with were chosen, for reports: the
    entry's ε, split, metric, validation score, trials and seeds. None when the file has
    no entry for the model and mode (a plug-in keeps its defaults); the score is None and
    the split ``"--set"`` when ``overrides`` changed the entry's settings."""
    if model not in {entry.model for entry in load_entries(root) if entry.mode == mode}:
        return None
    entry = settings_for(model, mode, epsilon, root)
    overridden = entry.with_overrides(overrides or {}).settings != entry.settings
    return {
        "epsilon": entry.epsilon,
        "chosen-on": "--set" if overridden else entry.chosen_on,
        "metric": entry.metric,
        "score": None if overridden else entry.validation_score,
        "trials": entry.trials,
        "seeds": entry.seeds,
    }


def federated_run_config(
    models: Iterable[str],
    epsilon: float,
    overrides: Mapping[str, Any] | None = None,
    root: Path = MODELS_DIR,
) -> dict[str, Any]:
    """Run-config keys of the federated entries nearest to ``epsilon`` of those ``models``
    the file lists (a plug-in model without an entry keeps its own defaults), with
    ``overrides`` (``<model>.<key>``) replacing their values; only the local-training
    knobs a site reads are returned."""
    listed = {entry.model for entry in load_entries(root)}
    config: dict[str, Any] = {}
    for model in models:
        if model in listed:
            entry = settings_for(model, "federated", epsilon, root)
            config.update(entry.with_overrides(overrides or {}).run_config())
    return config


def record(entry: EpsilonSettings, root: Path = MODELS_DIR) -> None:
    """Write ``entry`` into its model's settings file (replacing the one of its mode and ε),
    atomically.

    Raises:
        ValueError: the model has no settings file under ``root`` (a plug-in keeps its
            defaults).
    """
    path = settings_file(entry.model, root)
    if not path.is_file():
        raise ValueError(f"{path}: model {entry.model} has no settings file to record into")
    document = json.loads(path.read_text(encoding="utf-8"))
    fields = asdict(entry)
    for key in ("model", "mode", "epsilon"):
        del fields[key]
    document["modes"].setdefault(entry.mode, {})[f"{entry.epsilon:g}"] = {
        key.replace("_", "-"): value for key, value in fields.items()
    }
    atomic_write(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
