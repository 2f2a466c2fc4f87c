"""Keyed pseudonymisation of customer ids: the site's secret key and HMAC-SHA256 tokens.

A site generates one 32-byte secret key and keeps it next to its data (file mode 0600).
Every raw customer id is replaced at ingest by ``HMAC-SHA256(key, canonical_id)`` written
as 64 lowercase hex characters. The same key gives the same token, so a site's monthly
exports link up; without the key a token cannot be reversed or linked to another site's
token for the same person.

Canonical ids. Exports disagree on how an id is typed: a CSV reader may give the string
``"17850"``, a spreadsheet or a float column ``17850.0`` / ``"17850.0"``, an integer column
``17850``. They all name the same customer, so before hashing every id is turned into one
canonical string:

- surrounding whitespace is removed; an empty string is a missing id;
- an integral number (``17850``, ``17850.0``, ``"17850.0"``, ``"17850.00"``) becomes its
  decimal digits without fraction (``"17850"``);
- any other string is kept exactly (``"00123"`` keeps its leading zeros, ``"C-17"`` stays).

Missing ids (None, NaN, empty) stay missing: they are never hashed.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes, hmac

KEY_BYTES = 32
"""Length of a site key: 256 bits, the block-independent key size HMAC-SHA256 expects."""

_INTEGRAL_TEXT = re.compile(r"([+-]?\d+)\.0*")
_STR = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' default ``str`` dtype


class KeyFileError(Exception):
    """The site key file is missing, malformed, too widely readable, or already exists."""


def generate_key(path: Path) -> None:
    """Create a new random site key at ``path`` with mode 0600.

    The key is written to a private temporary file (``O_CREAT | O_EXCL``, mode 0600) in
    the same directory and then hard-linked to ``path``; linking fails if ``path`` exists,
    so an existing key is never overwritten and a reader never sees a half-written key.

    Raises:
        KeyFileError: ``path`` already exists or its directory does not.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite a site key")
    if not path.parent.is_dir():
        raise KeyFileError(f"cannot create key file {path}: directory {path.parent} is missing")
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask may have removed bits we need
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
    except FileExistsError:
        raise KeyFileError(
            f"key file {path} already exists; refusing to overwrite a site key"
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def load_key(path: Path) -> bytes:
    """Read the site key at ``path``, refusing anything that is not a private 32-byte key.

    Raises:
        KeyFileError: the file is missing, not a regular file, readable or writable by
            group or others, or not exactly 32 bytes long.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist; create it with `fedshop-site keygen --key {path}`"
        ) from None
    if not path.is_file():
        raise KeyFileError(f"key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} is accessible by group or others (mode {info.st_mode & 0o777:04o});"
            f" run `chmod 600 {path}`"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"key file {path} holds {len(key)} bytes, expected {KEY_BYTES}; it is not a site key"
        )
    return key


def canonical_ids(ids: pd.Series) -> pd.Series:
    """Return ``ids`` as canonical id strings (see the module docstring); missing stay NaN.

    Works once per distinct value, so it is cheap on long columns with repeated ids.
    """
    codes, distinct = pd.factorize(ids, use_na_sentinel=True)
    return _expand([_canonical_id(value) for value in distinct], codes, ids)


def pseudonymise_customers(ids: pd.Series, key: bytes) -> pd.Series:
    """Replace each customer id by its hex HMAC-SHA256 token under ``key``.

    Ids are canonicalised first (so ``"17850.0"`` and ``17850`` share a token); each
    distinct id is hashed once. Missing ids stay missing (NaN). The result has the index
    and name of ``ids`` and pandas ``str`` dtype.

    Raises:
        ValueError: ``key`` is not a 32-byte key, or an id is a non-finite number.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"a site key is {KEY_BYTES} bytes; refusing to pseudonymise")
    codes, distinct = pd.factorize(ids, use_na_sentinel=True)
    keyed = hmac.HMAC(key, hashes.SHA256())
    token_of: dict[str | None, str | None] = {None: None}
    tokens = []
    for value in distinct:
        canonical = _canonical_id(value)
        if canonical not in token_of:
            token_of[canonical] = _token(keyed, canonical)
        tokens.append(token_of[canonical])
    return _expand(tokens, codes, ids)


def customer_token(customer_id: object, key: bytes) -> str | None:
    """The token of one customer id under ``key`` (as :func:`pseudonymise_customers` gives
    it), or None for a missing id.

    Raises:
        ValueError: ``key`` is not a 32-byte key, or the id is a non-finite number.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"a site key is {KEY_BYTES} bytes; refusing to pseudonymise")
    canonical = _canonical_id(customer_id)
    return None if canonical is None else _token(hmac.HMAC(key, hashes.SHA256()), canonical)


def _expand(per_code: list[str | None], codes: np.ndarray, like: pd.Series) -> pd.Series:
    """The ``str`` Series whose row i is ``per_code[codes[i]]`` (code -1: missing)."""
    values = pc.take(pa.array(per_code, pa.string()), pa.array(codes, mask=codes < 0))
    return pd.Series(values, index=like.index, name=like.name, dtype=_STR)


def _token(keyed: hmac.HMAC, canonical_id: str) -> str:
    mac = keyed.copy()
    mac.update(canonical_id.encode("utf-8"))
    return mac.finalize().hex()


def _canonical_id(value: object) -> str | None:
    if isinstance(value, bool | np.bool_):
        raise ValueError("a boolean is not a customer id")
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            raise ValueError("an infinite number is not a customer id")
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if not text:
        return None
    integral = _INTEGRAL_TEXT.fullmatch(text)
    return integral.group(1) if integral else text
