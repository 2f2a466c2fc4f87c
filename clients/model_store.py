"""A site's installed global models: checked against their checksums, written atomically.

A site keeps the models it receives next to its data, one folder per run::

    <site dir>/models/<run>/manifest.json      the server's manifest (SHA-256 per weight file)
    <site dir>/models/<run>/<model>.npz        the global weights
    <site dir>/models/<run>/site-privacy.json  ε, δ and DP steps this site spent per model
    <site dir>/models/current                  the run in use: the one installed last

The site directory is where the site's privacy ledger lives
(:attr:`clients.site_data.SiteLocation.ledger_dir`): the prepared directory in deployment,
``<run-dir>/sites/<slug>`` in simulation. ``<run>`` is the name of the run's directory on
the server (its ``run-dir``), made safe as a file name. The ε recorded is what this site's
own ledger says it spent on each model, the ledger being the source of truth.

Installing checks every weight file named by the manifest against its SHA-256 and
refuses the whole bundle on any mismatch. It writes the run's folder under a temporary
name, flushes it to disk and renames it into place, and only then points ``current`` at
it (an atomic rewrite): a reader — ``fedshop-site serve`` watches ``current`` — sees the
previous model or the new one, never part of one. Loading checks the checksums again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.site_data import RUN_DIR
from privacy import wire
from privacy.atomic_files import atomic_write, fsync_path

MODELS_DIR = "models"
CURRENT = "current"
SITE_PRIVACY = "site-privacy.json"


class ModelStoreError(Exception):
    """A bundle cannot be installed or an installed model cannot be used; one line."""


@dataclass(frozen=True)
class InstalledModels:
    """The global models of one installed run, checked against the manifest."""

    run: str
    directory: Path
    manifest: dict[str, Any]
    weights: dict[str, dict[str, np.ndarray]]
    """Model name -> its ``state_dict`` as numpy arrays."""
    site_privacy: dict[str, dict[str, float]]
    """Model name -> the ``epsilon``, ``delta`` and ``dp-steps`` this site spent on it."""

    def entry(self, model: str) -> dict[str, Any]:
        """The manifest's entry of ``model`` (weights file, checksum, rounds, artefacts)."""
        return self.manifest[wire.MANIFEST_MODELS][model]


def current_file(site_dir: Path) -> Path:
    """The file naming the run in use (rewritten atomically by every install)."""
    return Path(site_dir) / MODELS_DIR / CURRENT


def install_bundle(files: Mapping[str, bytes], site_dir: Path, source: str) -> InstalledModels:
    """Check and install a bundle given as file name -> bytes; it becomes the run in use.

    Args:
        files: the manifest (:data:`privacy.wire.MANIFEST`) and the weight files it names
            (other files are ignored).
        site_dir: the site directory (module docstring); its ledger gives the ε spent.
        source: where the bundle came from, for error messages.

    Raises:
        ModelStoreError: no manifest, a weight file missing, unreadable or not matching
            its checksum; nothing is installed.
    """
    manifest = _manifest(files.get(wire.MANIFEST), source)
    weight_files = {}
    for model, entry in manifest[wire.MANIFEST_MODELS].items():
        name = _plain_file_name(entry.get(wire.WEIGHTS_FILE), model, source)
        data = files.get(name)
        if data is None:
            raise ModelStoreError(f"{source}: the weights of {model} ({name}) are missing")
        if hashlib.sha256(data).hexdigest() != entry.get(wire.SHA256):
            raise ModelStoreError(
                f"{source}: {name} does not match its sha256 in the manifest; refusing the "
                "bundle (corrupted or tampered in transit)"
            )
        _read_weights(data, f"{source}: {name}")
        weight_files[name] = data
    run = run_name(manifest)
    models_dir = Path(site_dir) / MODELS_DIR
    models_dir.mkdir(parents=True, exist_ok=True)
    privacy = site_privacy(Path(site_dir), list(manifest[wire.MANIFEST_MODELS]))
    target = models_dir / run
    staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=".installing-"))
    replaced = None
    try:
        contents = {
            wire.MANIFEST: files[wire.MANIFEST],
            **weight_files,
            SITE_PRIVACY: json.dumps(privacy, indent=2, sort_keys=True).encode(),
        }
        for name, data in contents.items():
            (staging / name).write_bytes(data)
            fsync_path(staging / name)
        fsync_path(staging)
        if target.exists():  # the same run delivered again: the new copy replaces it
            replaced = Path(tempfile.mkdtemp(dir=models_dir, prefix=".replaced-"))
            os.replace(target, replaced / run)
        os.replace(staging, target)
        fsync_path(models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if replaced is not None and not target.exists():
            os.replace(replaced / run, target)
        raise
    finally:
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    atomic_write(models_dir / CURRENT, run + "\n")
    return load_installed(site_dir)


def install_bundle_dir(bundle_dir: Path, site_dir: Path) -> InstalledModels:
    """Install a bundle directory (the server's ``<run-dir>/bundle`` copied to the site, or
    another site's installed run); see :func:`install_bundle`.

    Raises:
        ModelStoreError: as :func:`install_bundle`, or the directory cannot be read.
    """
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / wire.MANIFEST
    if not manifest_path.is_file():
        raise ModelStoreError(f"{manifest_path}: not found; is {bundle_dir} a model bundle?")
    files = {wire.MANIFEST: manifest_path.read_bytes()}
    manifest = _manifest(files[wire.MANIFEST], str(bundle_dir))
    for model, entry in manifest[wire.MANIFEST_MODELS].items():
        name = _plain_file_name(entry.get(wire.WEIGHTS_FILE), model, str(bundle_dir))
        if (bundle_dir / name).is_file():
            files[name] = (bundle_dir / name).read_bytes()
    return install_bundle(files, site_dir, str(bundle_dir))


def load_installed(site_dir: Path) -> InstalledModels:
    """The run in use at the site, every weight file checked against its checksum.

    Raises:
        ModelStoreError: no model installed yet, or the installed files do not check out.
    """
    pointer = current_file(site_dir)
    if not pointer.is_file():
        raise ModelStoreError(
            f"no model installed in {pointer.parent}: join a federation run, or install a "
            "bundle with `fedshop-site install-model BUNDLE --data DIR`"
        )
    run = pointer.read_text().strip()
    directory = pointer.parent / run
    manifest_path = directory / wire.MANIFEST
    if not manifest_path.is_file():
        raise ModelStoreError(f"{manifest_path}: the installed run {run!r} has no manifest")
    manifest = _manifest(manifest_path.read_bytes(), str(directory))
    weights = {}
    for model, entry in manifest[wire.MANIFEST_MODELS].items():
        path = directory / _plain_file_name(entry.get(wire.WEIGHTS_FILE), model, str(directory))
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != entry.get(wire.SHA256):
            raise ModelStoreError(f"{path}: missing or not matching its sha256; reinstall")
        weights[model] = _read_weights(data, str(path))
    privacy = json.loads((directory / SITE_PRIVACY).read_text())
    return InstalledModels(run, directory, manifest, weights, privacy)


def run_name(manifest: Mapping[str, Any]) -> str:
    """The folder name of a bundle's run: its ``run-dir``'s name, safe as a file name."""
    run_dir = str(manifest.get(wire.RUN_CONFIG, {}).get(RUN_DIR, ""))
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(run_dir).name).strip("-.")
    if not name or name == CURRENT:
        name = "run-" + re.sub(r"[^0-9]", "", str(manifest.get(wire.CREATED_AT, "")))[:14]
    return name


def site_privacy(site_dir: Path, models: list[str]) -> dict[str, dict[str, float]]:
    """Per model, the ε (at the site's δ) and DP steps this site's own ledger records;
    zero for a model the site never trained, or a site without a ledger."""
    # Imported here: the accountants are needed only once a bundle is installed.
    from privacy.ledger import LEDGER_FILE, PrivacyLedger, ledger_epsilon

    spent = {m: {wire.EPSILON: 0.0, wire.DELTA: 0.0, wire.DP_STEPS: 0} for m in models}
    if not (Path(site_dir) / LEDGER_FILE).is_file():
        return spent  # opening the ledger would create one
    with PrivacyLedger(Path(site_dir) / LEDGER_FILE) as ledger:
        for model in models:
            entries = ledger.entries(model)
            if entries:
                delta = entries[-1].delta
                spent[model] = {
                    wire.EPSILON: ledger_epsilon(entries, delta),
                    wire.DELTA: delta,
                    wire.DP_STEPS: sum(entry.segment.steps for entry in entries),
                }
    return spent


def _manifest(data: bytes | None, source: str) -> dict[str, Any]:
    if data is None:
        raise ModelStoreError(f"{source}: the bundle has no {wire.MANIFEST}")
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelStoreError(f"{source}: {wire.MANIFEST} is not JSON ({error})") from None
    models = manifest.get(wire.MANIFEST_MODELS) if isinstance(manifest, dict) else None
    if not isinstance(models, dict) or not models:
        raise ModelStoreError(f"{source}: {wire.MANIFEST} lists no models")
    return manifest


def _plain_file_name(name: Any, model: str, source: str) -> str:
    """The weights file name of a manifest entry, refused unless it is a plain file name."""
    text = str(name or "")
    if not text or text.startswith(".") or "/" in text or "\\" in text or text == wire.MANIFEST:
        raise ModelStoreError(f"{source}: model {model} has no valid weights file name")
    return text


def _read_weights(data: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ModelStoreError(f"{where}: not a weights file ({error})") from None
