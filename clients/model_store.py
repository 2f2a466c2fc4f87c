"""A site's installed global models: refused unless verified in full, switched atomically.

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

The bundle comes from a server the site need not trust, and naming a model imports its
module (:func:`models.registry.get_model`). So installing goes in this order:

1. **check the manifest, importing nothing**: every model it names is one the site's
   privacy policy allows (:func:`allowed_models`), and the bundle's files are exactly the
   manifest and the weights files it names, each a plain ``.npz`` file name that is none of
   the site's own (:func:`reserved_names`); anything else refuses the whole bundle;
2. **write** the run's folder under a temporary hidden name, flushed to disk;
3. **verify** it by loading it as it is on disk: each weights file against its SHA-256,
   each model's module built from the bundle's artefacts and its weights loaded strictly;
4. **switch**: rename the folder into place, then point ``current`` at it (an atomic
   rewrite).

A bundle refused at any step leaves ``current``, the run in use and every installed run
as they were, and no folder behind. A reader — ``fedshop-site serve`` watches ``current``
— sees the previous model or the new one, never part of one. Loading the run in use
(:func:`load_installed`, which scoring and serving read through) verifies it the same way
against the site's policy of the moment.
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
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.site_data import RUN_DIR
from common import wire
from common.atomic_files import atomic_write, fsync_path

if TYPE_CHECKING:
    from torch import nn

MODELS_DIR = "models"
CURRENT = "current"
SITE_PRIVACY = "site-privacy.json"
LOCAL_EVALUATION = "local-evaluation.json"
"""The site's exact metrics of the run's models on its own customers
(:mod:`clients.local_evaluation`), written after install; never part of a bundle."""
WEIGHTS_SUFFIX = ".npz"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside a database (the ledger) while it is in use."""
MAX_REASON = 300
"""Characters of an underlying error quoted in a one-line refusal."""
IN_TRANSIT = "refusing the bundle (corrupted or tampered in transit)"
"""What a checksum mismatch means while a bundle is installed."""
ON_DISK = "the installed run was changed on disk; reinstall it"
"""What a checksum mismatch means when the run in use is loaded."""


class ModelStoreError(Exception):
    """A bundle cannot be installed or an installed model cannot be used; one line."""


@dataclass(frozen=True)
class InstalledModels:
    """The global models of one installed run, verified in full (module docstring)."""

    run: str
    directory: Path
    manifest: dict[str, Any]
    weights: dict[str, dict[str, np.ndarray]]
    """Model name -> its ``state_dict`` as numpy arrays."""
    site_privacy: dict[str, dict[str, float]]
    """Model name -> the ``epsilon``, ``delta`` and ``dp-steps`` this site spent on it."""
    facts: dict[str, dict[str, Any]]
    """Model name -> the shared facts rebuilt from the bundle's artefacts."""
    modules: dict[str, nn.Module]
    """Model name -> its torch module with the weights loaded (verified to fit)."""

    def entry(self, model: str) -> dict[str, Any]:
        """The manifest's entry of ``model`` (weights file, checksum, rounds, artefacts)."""
        return self.manifest[wire.MANIFEST_MODELS][model]


def current_file(site_dir: Path) -> Path:
    """The file naming the run in use (rewritten atomically by every install)."""
    return Path(site_dir) / MODELS_DIR / CURRENT


def install_bundle(files: Mapping[str, bytes], site_dir: Path, source: str) -> InstalledModels:
    """Install a bundle given as file name -> bytes, verified in full; it becomes the run in use.

    Nothing is written unless the manifest names only models the site's policy allows
    (:func:`allowed_models`) and files of allowed names (:func:`bundle_file_names`), and
    ``current`` is switched only once the run's folder, as written, loads (:func:`_load_run`):
    checksums, weights that build into their models.

    Args:
        files: the manifest (:data:`common.wire.MANIFEST`) and the weight files it names,
            nothing else.
        site_dir: the site directory (module docstring); its ledger gives the policy and ε.
        source: where the bundle came from, for error messages.

    Raises:
        ModelStoreError: the bundle is refused (see above); nothing is installed.
    """
    site_dir = Path(site_dir)
    allowed = allowed_models(site_dir)
    manifest = _checked_manifest(files.get(wire.MANIFEST), allowed, source)
    names = bundle_file_names(manifest)
    unnamed = sorted(set(files) - names)
    if unnamed:
        raise ModelStoreError(f"{source}: files the manifest does not name: {unnamed}; refused")
    models_dir = site_dir / MODELS_DIR
    models_dir.mkdir(parents=True, exist_ok=True)
    run = run_name(manifest)
    privacy = site_privacy(site_dir, list(manifest[wire.MANIFEST_MODELS]))
    contents = {name: files[name] for name in sorted(names & set(files))}
    contents[SITE_PRIVACY] = json.dumps(privacy, indent=2, sort_keys=True).encode()
    staging = _write_staging(models_dir, contents)
    try:
        installed = _load_run(staging, run, allowed, source, IN_TRANSIT)
        _move_into_place(staging, models_dir / run)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write(models_dir / CURRENT, run + "\n")
    return replace(installed, directory=models_dir / run)


def install_bundle_dir(bundle_dir: Path, site_dir: Path) -> InstalledModels:
    """Install a bundle directory (the server's ``<run-dir>/bundle`` copied to the site, or
    another site's installed run: only the manifest and the weights it names are read, so
    that run's ``site-privacy.json`` stays behind); see :func:`install_bundle`.

    Raises:
        ModelStoreError: as :func:`install_bundle`, or the directory cannot be read.
    """
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / wire.MANIFEST
    if not manifest_path.is_file():
        raise ModelStoreError(f"{manifest_path}: not found; is {bundle_dir} a model bundle?")
    manifest = _checked_manifest(
        manifest_path.read_bytes(), allowed_models(site_dir), str(bundle_dir)
    )
    files = _read_files(bundle_dir, bundle_file_names(manifest))
    return install_bundle(files, site_dir, str(bundle_dir))


def load_installed(site_dir: Path) -> InstalledModels:
    """The run in use at the site, verified as at install (:func:`_load_run`) against the
    site's policy of now: a model the site has since dropped from its policy is refused.

    Raises:
        ModelStoreError: no model installed yet, or the installed run does not check out.
    """
    pointer = current_file(site_dir)
    if not pointer.is_file():
        raise ModelStoreError(
            f"no model installed in {pointer.parent}: join a federation run, or install a "
            "bundle with `fedshop-site install-model BUNDLE --data DIR`"
        )
    run = pointer.read_text().strip()
    directory = pointer.parent / run
    if not _is_plain_name(run) or not directory.is_dir():
        raise ModelStoreError(f"{pointer}: names no installed run ({run!r}); reinstall")
    return _load_run(directory, run, allowed_models(site_dir), str(directory), ON_DISK)


def allowed_models(site_dir: Path) -> tuple[str, ...]:
    """The models the site's privacy policy allows (its ``models``; the built-in ones when
    it names none or no policy is set): a bundle may name no other, since naming a model
    imports its module (:func:`models.registry.get_model`). A missing ledger is not created.

    Raises:
        ModelStoreError: the ledger's policy cannot be read (fail closed).
    """
    # Imported here: the ledger's accountants and the model stack only when models are used.
    from models.registry import BUILTIN_MODELS
    from privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger

    path = Path(site_dir) / LEDGER_FILE
    if not path.is_file():
        return BUILTIN_MODELS
    try:
        with PrivacyLedger(path) as ledger:
            policy = ledger.policy()
    except LedgerError as error:
        raise ModelStoreError(f"{path}: cannot read the site's policy ({error})") from None
    return (policy.models if policy is not None else ()) or BUILTIN_MODELS


def reserved_names() -> frozenset[str]:
    """File names a bundle may not use as weights: the files the site writes itself in a
    run folder, ``models/`` and the site directory (the manifest is the manifest's only)."""
    from privacy.ledger import LEDGER_FILE

    ledger = {LEDGER_FILE, *(LEDGER_FILE + suffix for suffix in SQLITE_SIDE_FILES)}
    return frozenset({wire.MANIFEST, SITE_PRIVACY, LOCAL_EVALUATION, CURRENT, MODELS_DIR, *ledger})


def bundle_file_names(manifest: Mapping[str, Any]) -> set[str]:
    """The only files a bundle holds: the manifest and the weights files it names (each
    checked by :func:`_checked_manifest`)."""
    models = manifest[wire.MANIFEST_MODELS].values()
    return {wire.MANIFEST, *(entry[wire.WEIGHTS_FILE] for entry in models)}


def run_name(manifest: Mapping[str, Any]) -> str:
    """The folder name of a bundle's run: its ``run-dir``'s name, safe as a file name."""
    config = manifest.get(wire.RUN_CONFIG)
    run_dir = str(config.get(RUN_DIR, "") if isinstance(config, dict) else "")
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


def _load_run(
    directory: Path, run: str, allowed: Collection[str], source: str, tampered: str
) -> InstalledModels:
    """Load a run folder and verify all of it, in an order that imports nothing foreign:
    the manifest (models allowed, file names), each weights file's checksum and arrays,
    then each model's module built from its artefacts with the weights loaded strictly.
    ``tampered`` says what a checksum mismatch means here (:data:`IN_TRANSIT`, :data:`ON_DISK`)."""
    manifest_path = directory / wire.MANIFEST
    data = manifest_path.read_bytes() if manifest_path.is_file() else None
    manifest = _checked_manifest(data, allowed, source)
    files = _read_files(directory, bundle_file_names(manifest) - {wire.MANIFEST})
    weights = _checked_weights(manifest, files, source, tampered)
    facts, modules = _built_modules(manifest, weights, source)
    privacy = _site_privacy_file(directory / SITE_PRIVACY)
    return InstalledModels(run, directory, manifest, weights, privacy, facts, modules)


def _checked_manifest(data: bytes | None, allowed: Collection[str], source: str) -> dict[str, Any]:
    """The manifest, refused unless it lists only models in ``allowed`` (checked before any
    is imported), each entry an object naming its own weights file (:func:`_weights_name`)."""
    if data is None:
        raise ModelStoreError(f"{source}: the bundle has no {wire.MANIFEST}")
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelStoreError(f"{source}: {wire.MANIFEST} is not JSON ({error})") from None
    models = manifest.get(wire.MANIFEST_MODELS) if isinstance(manifest, dict) else None
    if not isinstance(models, dict) or not models:
        raise ModelStoreError(f"{source}: {wire.MANIFEST} lists no models")
    foreign = [model for model in models if model not in allowed]
    if foreign:
        raise ModelStoreError(
            f"{source}: model {', '.join(foreign)} is not allowed by this site's policy "
            f"(allowed: {', '.join(allowed)}); refusing the bundle"
        )
    names = [_weights_name(entry, model, source) for model, entry in models.items()]
    if len({name.casefold() for name in names}) != len(names):
        raise ModelStoreError(f"{source}: two models share a weights file name ({names})")
    return manifest


def _weights_name(entry: Any, model: str, source: str) -> str:
    """The weights file name of ``model``'s manifest entry: a plain ``.npz`` file name (it
    is written in the run folder as named) and none of :func:`reserved_names`."""
    name = entry.get(wire.WEIGHTS_FILE) if isinstance(entry, dict) else None
    if isinstance(name, str) and name in reserved_names():
        raise ModelStoreError(
            f"{source}: model {model}'s weights file {name!r} is a name the site keeps for its "
            "own files; refusing the bundle"
        )
    if not isinstance(name, str) or not _is_plain_name(name) or not name.endswith(WEIGHTS_SUFFIX):
        raise ModelStoreError(f"{source}: model {model} has no valid weights file name ({name!r})")
    return name


def _is_plain_name(name: str) -> bool:
    """A file name that stays in its folder and is not hidden: no path separator, NUL or
    other unprintable character, not starting with a dot (so neither ``.`` nor ``..``)."""
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    return (
        bool(name)
        and name.isprintable()
        and not name.startswith(".")
        and not (separators & set(name))
    )


def _read_files(directory: Path, names: Collection[str]) -> dict[str, bytes]:
    """The files of ``names`` that exist in ``directory``, by name (the rest are missing)."""
    return {name: (directory / name).read_bytes() for name in names if (directory / name).is_file()}


def _checked_weights(
    manifest: Mapping[str, Any], files: Mapping[str, bytes], source: str, tampered: str
) -> dict[str, dict[str, np.ndarray]]:
    """Each model's weights file, present, matching its checksum, and a numpy archive."""
    weights = {}
    for model, entry in manifest[wire.MANIFEST_MODELS].items():
        name = entry[wire.WEIGHTS_FILE]
        data = files.get(name)
        if data is None:
            raise ModelStoreError(f"{source}: the weights of {model} ({name}) are missing")
        if hashlib.sha256(data).hexdigest() != entry.get(wire.SHA256):
            raise ModelStoreError(
                f"{source}: {name} does not match its sha256 in the manifest; {tampered}"
            )
        weights[model] = _read_weights(data, f"{source}: {name}")
    return weights


def _built_modules(
    manifest: Mapping[str, Any], weights: Mapping[str, Mapping[str, np.ndarray]], source: str
) -> tuple[dict[str, dict[str, Any]], dict[str, nn.Module]]:
    """Each model's facts (from its artefacts) and module with its weights loaded strictly:
    weights that do not fit their model are refused here, not when a customer is scored."""
    import torch

    from models.registry import get_model

    facts, modules = {}, {}
    for model, state in weights.items():
        try:
            federated = get_model(model)
        except ValueError as error:
            raise ModelStoreError(f"{source}: {error}") from None
        artefacts = manifest[wire.MANIFEST_MODELS][model].get(wire.ARTEFACTS, {})
        try:
            facts[model] = federated.facts_from_artefacts(artefacts)
            modules[model] = federated.build(facts[model])
            tensors = {key: torch.from_numpy(value) for key, value in state.items()}
            modules[model].load_state_dict(tensors, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:MAX_REASON]
            raise ModelStoreError(
                f"{source}: the weights of {model} do not fit the model ({reason})"
            ) from None
    return facts, modules


def _site_privacy_file(path: Path) -> dict[str, dict[str, float]]:
    """The ε this site spent per model, as written at install."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelStoreError(f"{path}: unreadable ({error}); reinstall the run") from None


def _write_staging(models_dir: Path, contents: Mapping[str, bytes]) -> Path:
    """A new hidden folder in ``models_dir`` holding ``contents``, flushed to disk; removed
    again if writing fails."""
    staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=".installing-"))
    try:
        for name, data in contents.items():
            (staging / name).write_bytes(data)
            fsync_path(staging / name)
        fsync_path(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the verified ``staging`` folder to ``target``; the same run delivered again
    replaces the old copy, which is put back if the rename fails."""
    replaced = None
    try:
        if target.exists():
            replaced = Path(tempfile.mkdtemp(dir=target.parent, prefix=".replaced-"))
            os.replace(target, replaced / target.name)
        os.replace(staging, target)
        fsync_path(target.parent)
    except BaseException:
        if replaced is not None and not target.exists():
            os.replace(replaced / target.name, target)
        raise
    finally:
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)


def _read_weights(data: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        NotImplementedError,
        zlib.error,
        zipfile.BadZipFile,
    ) as error:
        raise ModelStoreError(f"{where}: not a weights file ({error})") from None
