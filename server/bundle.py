"""Export of the final model bundle of a run.

``<run-dir>/bundle/`` holds, for every trained model, ``<model>.npz`` (the global
``state_dict`` as numpy arrays) and one ``manifest.json`` with what a site needs to use
the weights and what an auditor needs to trust them: the SHA-256 of each weights file,
model-specific artefacts (item vocabulary, feature scaling constants), rounds completed,
ε/δ/steps last reported by each storefront per model, the run's resolved config, and
package versions. The manifest keys a site reads are named in :mod:`common.wire`; the
bundle is what every site installs at the end of a run (:mod:`server.delivery`).

The bundle directory is built next to its destination and swapped in with renames, so
a reader never sees a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from common import wire

BUNDLE_DIR = "bundle"
MANIFEST = wire.MANIFEST
_VERSIONED_PACKAGES = ("fedshop", "flwr", "torch", "opacus", "numpy", "pandas")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the bundle's numbers."""
    versions = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def export_bundle(
    run_dir: Path | str,
    weights: dict[str, dict[str, np.ndarray]],
    *,
    rounds_done: dict[str, int],
    privacy: dict[str, dict[str, dict[str, float]]],
    run_config: dict[str, Any],
    artefacts: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write the bundle for ``weights`` (model -> state arrays) and return its directory.

    Parameters
    ----------
    run_dir : Path | str
        The run directory; the bundle goes to ``<run_dir>/bundle``.
    weights : dict
        Final global weights per model.
    rounds_done : dict
        Completed federated rounds per model.
    privacy : dict
        Per model, per storefront: the ``epsilon``, ``delta`` and ``dp-steps`` the site
        last reported.
    run_config : dict
        The run's resolved config (provenance).
    artefacts : dict, optional
        Per model, JSON-serialisable artefacts such as ``item-vocabulary`` or
        ``feature-scaling``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".bundle-"))
    try:
        checksums = {}
        for model, state in weights.items():
            with open(staging / f"{model}.npz", "wb") as file:
                np.savez(file, **state)
                file.flush()
                os.fsync(file.fileno())
            checksums[model] = hashlib.sha256((staging / f"{model}.npz").read_bytes()).hexdigest()
        manifest = {
            wire.CREATED_AT: datetime.now(UTC).isoformat(),
            wire.MANIFEST_MODELS: {
                model: {
                    wire.WEIGHTS_FILE: f"{model}.npz",
                    wire.SHA256: checksums[model],
                    wire.ROUNDS_DONE: rounds_done.get(model, 0),
                    wire.ARTEFACTS: (artefacts or {}).get(model, {}),
                    "privacy-per-storefront": privacy.get(model, {}),
                }
                for model in weights
            },
            wire.RUN_CONFIG: run_config,
            "versions": package_versions(),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        target = run_dir / BUNDLE_DIR
        previous = run_dir / ".bundle-previous"
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(target, previous)
        os.replace(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_bundle(bundle_dir: Path | str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Read a bundle back: ``(manifest, weights per model)``."""
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    weights = {}
    for model, entry in manifest[wire.MANIFEST_MODELS].items():
        with np.load(bundle_dir / entry[wire.WEIGHTS_FILE], allow_pickle=False) as npz:
            weights[model] = {key: npz[key] for key in npz.files}
    return manifest, weights
