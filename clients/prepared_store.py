"""A site's prepared data kept on its own disk, for every process that answers for it.

The in-memory cache (:mod:`clients.prepared_cache`) lives in one process. A simulation
spreads a site's messages over several Ray workers, so each worker read and featurised
the site's orders once more (at 1,000 storefronts of 50 customers, 53 ms per miss in a
worker against 11 ms in one process), and a deployed SuperNode that starts its ClientApp
in a fresh process would do so on every message. This store writes the prepared data once
into the site's ledger directory, one file per model, and every later process loads it.

A file is used only for the exact inputs it was made from: the orders file (path,
modification time and size), the model, the shared facts' digest, and the code that
prepares the data (a digest of the model's module and of the ``models`` and ``clients``
packages, whose classes the file holds). Anything else is a miss: the data are prepared
from the orders again and the file replaced. A file that cannot be loaded (cut short, or
from other code) is a miss too.

The file is a pickle, and loading a pickle runs code: it is written by the site into its
own ledger directory, which must be as private as the ledger itself (it holds the
customers' pseudonymised histories, as the orders file does). Data too large for the
in-memory budget are not written either: a store that big would cost more to write than
to prepare.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TypeVar

from clients import site_timing
from clients.prepared_cache import estimated_bytes
from common.atomic_files import atomic_write

Value = TypeVar("Value")

STORE_PREFIX = "prepared-"
"""Store files are ``<ledger dir>/prepared-<model>.pickle``."""
_PACKAGES = ("models", "clients")


def prepared_file(ledger_dir: Path, model_name: str) -> Path:
    """Where the site keeps the prepared data of ``model_name`` (a plug-in's module path
    is a valid file name as it is: dots and identifiers)."""
    return Path(ledger_dir) / f"{STORE_PREFIX}{model_name}.pickle"


def load_or_prepare(
    path: Path,
    inputs: tuple[object, ...],
    module: str,
    prepare: Callable[[], Value],
    max_bytes: int,
) -> Value:
    """The value stored at ``path`` for exactly ``inputs`` and the current code of
    ``module``, else ``prepare()``, stored there (atomically) when it is at most
    ``max_bytes`` (estimated). Exceptions of ``prepare`` propagate; nothing is stored."""
    key = _input_digest(inputs, module)
    with site_timing.phase("load-prepared"):
        stored = _load(path, key)
    if stored is not None:
        return stored
    value = prepare()
    if estimated_bytes(value) <= max_bytes:
        with site_timing.phase("store-prepared"):
            _store(path, key, value)
    return value


def _load(path: Path, key: str) -> object | None:
    # The key is pickled on its own ahead of the value, so a stale file is recognised
    # without unpickling its (possibly large) data.
    try:
        with open(path, "rb") as file:
            if pickle.load(file) != key:
                return None
            return pickle.load(file)
    except Exception:  # missing, cut short, or classes of other code: a miss
        return None


def _store(path: Path, key: str, value: object) -> None:
    payload = pickle.dumps(key) + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        # not fsynced: a file cut short by a power cut fails to load, which is a miss
        atomic_write(path, payload, durable=False)
    except OSError:
        pass  # a full or read-only disk: the data are prepared again next time


def _input_digest(inputs: tuple[object, ...], module: str) -> str:
    text = repr((inputs, module, _code_digest(module)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@cache
def _code_digest(module: str) -> str:
    """SHA-256 over the source files of the ``models`` and ``clients`` packages and of
    ``module`` (a plug-in model's), read once per process."""
    digest = hashlib.sha256()
    files = {Path(sys.modules[module].__file__ or "")} if module in sys.modules else set()
    for package in _PACKAGES:
        root = Path(sys.modules[package].__file__ or "").parent
        files.update(root.glob("*.py"))
    for file in sorted(files):
        if file.is_file():
            digest.update(os.fsencode(file.name))
            digest.update(file.read_bytes())
    return digest.hexdigest()
