"""Site key handling and HMAC pseudonymisation of customer ids."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import numpy as np
import pandas as pd
import pytest

from privacy.pseudonymise import (
    KEY_BYTES,
    KeyFileError,
    canonical_ids,
    generate_key,
    load_key,
    pseudonymise_customers,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def test_generated_key_is_32_private_bytes(tmp_path):
    path = tmp_path / "site.key"
    generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_key(path)) == KEY_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.key"]  # no temp file left


def test_generated_key_is_private_even_under_a_permissive_umask(tmp_path):
    previous = os.umask(0)
    try:
        generate_key(tmp_path / "site.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "site.key").stat().st_mode) == 0o600


def test_two_generated_keys_differ(tmp_path):
    generate_key(tmp_path / "a.key")
    generate_key(tmp_path / "b.key")
    assert load_key(tmp_path / "a.key") != load_key(tmp_path / "b.key")


def test_generate_key_refuses_to_overwrite(tmp_path):
    path = tmp_path / "site.key"
    generate_key(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(path)
    assert path.read_bytes() == before


def test_generate_key_refuses_a_dangling_symlink(tmp_path):
    link = tmp_path / "site.key"
    link.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(link)
    assert not (tmp_path / "elsewhere.key").exists()


def test_generate_key_needs_an_existing_directory(tmp_path):
    with pytest.raises(KeyFileError, match="directory"):
        generate_key(tmp_path / "missing" / "site.key")


def test_load_key_fails_closed_on_a_missing_file(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "site.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_load_key_refuses_a_key_others_can_access(tmp_path, mode):
    path = tmp_path / "site.key"
    generate_key(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="group or others"):
        load_key(path)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_load_key_refuses_a_wrong_length(tmp_path, length):
    path = tmp_path / "site.key"
    path.write_bytes(b"k" * length)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=f"holds {length} bytes"):
        load_key(path)


def test_load_key_refuses_a_directory(tmp_path):
    path = tmp_path / "site.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(path)


def test_token_is_the_hex_hmac_sha256_of_the_canonical_id():
    tokens = pseudonymise_customers(pd.Series(["17850", "C-17"]), KEY_A)
    expected = [hmac.new(KEY_A, raw, hashlib.sha256).hexdigest() for raw in (b"17850", b"C-17")]
    assert tokens.tolist() == expected


def test_every_spelling_of_one_id_gets_one_token():
    spellings = [
        pseudonymise_customers(pd.Series(["17850"]), KEY_A),
        pseudonymise_customers(pd.Series([" 17850.0 "]), KEY_A),
        pseudonymise_customers(pd.Series(["17850.00"]), KEY_A),
        pseudonymise_customers(pd.Series([17850.0, np.nan]), KEY_A),
        pseudonymise_customers(pd.Series([17850], dtype="int64"), KEY_A),
    ]
    assert len({tokens.iloc[0] for tokens in spellings}) == 1


def test_leading_zeros_and_fractions_are_kept_as_distinct_ids():
    assert canonical_ids(pd.Series(["00123", "123", "12.5", 12.5])).tolist() == [
        "00123",
        "123",
        "12.5",
        "12.5",
    ]


def test_same_key_links_and_different_keys_do_not():
    ids = pd.Series(["17850", "13047", "17850"])
    first, again = pseudonymise_customers(ids, KEY_A), pseudonymise_customers(ids, KEY_A)
    other = pseudonymise_customers(ids, KEY_B)
    assert first.tolist() == again.tolist()
    assert first.iloc[0] == first.iloc[2] != first.iloc[1]
    assert set(first).isdisjoint(other)


def test_missing_ids_stay_missing_and_index_is_kept():
    ids = pd.Series(["17850", None, "", "  "], index=[10, 11, 12, 13], name="CustomerID")
    tokens = pseudonymise_customers(ids, KEY_A)
    assert tokens.index.tolist() == [10, 11, 12, 13]
    assert tokens.name == "CustomerID"
    assert tokens.isna().tolist() == [False, True, True, True]


@pytest.mark.parametrize("key", [b"", b"short", KEY_A + b"x", "a" * 32])
def test_pseudonymise_refuses_a_key_of_the_wrong_size_or_type(key):
    with pytest.raises(ValueError, match="32 bytes"):
        pseudonymise_customers(pd.Series(["17850"]), key)


def test_an_infinite_id_is_refused():
    with pytest.raises(ValueError, match="infinite"):
        pseudonymise_customers(pd.Series([np.inf]), KEY_A)
