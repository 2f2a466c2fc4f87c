"""Per-round checkpoints of a federated run, and resuming from the latest valid one.

Flower has no built-in resume (``Strategy.start`` always counts from round 1), so the
ServerApp writes one checkpoint after every completed round: the global weights of
every model, how many rounds each model has completed, the server-optimizer state
(FedAdam moments), the per-round records so far and the run's resolved config.

File layout: ``<run-dir>/checkpoints/checkpoint-<sequence>.npz``, where ``sequence``
counts completed rounds over all models, so later files are newer. Arrays are stored
as ``weights/<model>/<key>`` and ``optimizer/<model>/<state>/<key>``; the rest is JSON
in the ``meta`` entry (no pickle). Writes are atomic (temp file, fsync, ``os.replace``,
fsync of the directory), so a crash leaves either the old or the new file; a file that
is nevertheless unreadable (truncated, bad CRC) is skipped in favour of the previous
one. The newest ``keep`` files are kept.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic_files import atomic_output

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d{6})\.npz$")
_FORMAT_VERSION = 1


@dataclass
class ModelProgress:
    """Where one model's federated training stands."""

    rounds_done: int
    weights: dict[str, np.ndarray]
    optimizer_state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """Everything needed to continue a run after the last completed round."""

    models: dict[str, ModelProgress]
    round_records: list[dict[str, Any]] = field(default_factory=list)
    run_config: dict[str, Any] = field(default_factory=dict)

    @property
    def sequence(self) -> int:
        """Completed rounds over all models; orders checkpoint files."""
        return sum(progress.rounds_done for progress in self.models.values())

    def rounds_done(self, model: str) -> int:
        """Completed rounds of ``model`` (0 if it has not started)."""
        progress = self.models.get(model)
        return progress.rounds_done if progress else 0


def remaining_rounds(checkpoint: Checkpoint | None, model: str, total_rounds: int) -> range:
    """Absolute round numbers still to run for ``model``: ``done+1 .. total``."""
    done = checkpoint.rounds_done(model) if checkpoint else 0
    return range(done + 1, total_rounds + 1)


def save_checkpoint(run_dir: Path | str, checkpoint: Checkpoint, keep: int = 3) -> Path:
    """Atomically write ``checkpoint`` into ``run_dir`` and prune all but the newest ``keep``."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "format-version": _FORMAT_VERSION,
        "rounds-done": {},
        "round-records": checkpoint.round_records,
        "run-config": checkpoint.run_config,
    }
    for model, progress in checkpoint.models.items():
        meta["rounds-done"][model] = progress.rounds_done
        for key, value in progress.weights.items():
            arrays[f"weights/{model}/{key}"] = value
        for state, state_arrays in progress.optimizer_state.items():
            for key, value in state_arrays.items():
                arrays[f"optimizer/{model}/{state}/{key}"] = value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    target = directory / f"checkpoint-{checkpoint.sequence:06d}.npz"
    with atomic_output(target) as temp, temp.open("wb") as file:
        np.savez(file, **arrays)
    for old in _checkpoint_files(directory)[keep:]:
        old.unlink(missing_ok=True)
    return target


def latest_checkpoint(run_dir: Path | str) -> Checkpoint | None:
    """The newest readable checkpoint in ``run_dir``, or ``None`` if there is none."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    for path in _checkpoint_files(directory):
        try:
            return load_checkpoint(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            logger.warning("Skipping unreadable checkpoint %s: %s", path, err)
    return None


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read one checkpoint file, verifying every entry (raises on any damage)."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {name: npz[name] for name in npz.files}  # reads (and CRC-checks) all
    meta = json.loads(entries.pop("meta").tobytes())
    if meta.get("format-version") != _FORMAT_VERSION:
        raise ValueError(f"unknown checkpoint format {meta.get('format-version')!r}")
    models = {
        model: ModelProgress(rounds_done=int(done), weights={})
        for model, done in meta["rounds-done"].items()
    }
    for name, value in entries.items():
        kind, model, rest = name.split("/", 2)
        if kind == "weights":
            models[model].weights[rest] = value
        elif kind == "optimizer":
            state, key = rest.split("/", 1)
            models[model].optimizer_state.setdefault(state, {})[key] = value
        else:
            raise ValueError(f"unexpected checkpoint entry {name!r}")
    return Checkpoint(models, meta["round-records"], meta["run-config"])


def _checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files, newest first."""
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)
