"""Train messages' economy: the 8-bit codec's error bounds (a real site answering in int8:
tests/test_client_app.py) and packed shared facts (sent once: tests/test_facts_once.py)."""

import json
import zlib

import numpy as np
import pytest

from common import wire
from common.wire_encoding import (
    LEVELS,
    RANGE_SUFFIX,
    EncodingError,
    check_encoding,
    decode_int8,
    encode_int8,
)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "bias": rng.normal(0, 3, 3659).astype(np.float32),
        "layer.weight": rng.normal(0, 0.1, (16, 17)).astype(np.float32),
        "constant": np.full(100, 0.5, dtype=np.float32),
        "small": np.linspace(0, 1, 5, dtype=np.float32),
        "steps": np.arange(3, dtype=np.int64),
    }


def step_of(array: np.ndarray) -> float:
    return float(array.max() - array.min()) / LEVELS


def test_nearest_rounding_is_within_half_a_step_at_a_quarter_of_the_bytes():
    original = weights()
    encoded = encode_int8(original)
    decoded = decode_int8(encoded)
    assert encoded["bias"].dtype == np.uint8 and encoded["bias"].nbytes == original["bias"].size
    assert encoded["bias" + RANGE_SUFFIX].dtype == np.float32
    for name in ("bias", "layer.weight"):
        error = np.abs(decoded[name] - original[name]).max()
        assert error <= step_of(original[name]) / 2 * 1.001
        assert error > 0  # it is a lossy code, not a copy
    np.testing.assert_array_equal(decoded["constant"], original["constant"])
    np.testing.assert_array_equal(decoded["steps"], original["steps"])  # not floating: as is
    assert encoded["small"] is original["small"]  # too small to gain from one byte per value
    assert set(decoded) == set(original) and decoded["bias"].dtype == np.float32


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    update = {"u": np.random.default_rng(1).normal(0, 0.01, 2000).astype(np.float32)}
    step = step_of(update["u"])
    draws = np.stack(
        [decode_int8(encode_int8(update, np.random.default_rng(s)))["u"] for s in range(400)]
    )
    assert np.abs(draws - update["u"]).max() <= step * 1.001
    # Mean of 400 draws: its error has sd <= step / (2 * 20); nearest rounding would leave
    # a systematic error of up to step / 2 on most coordinates.
    assert np.abs(draws.mean(axis=0) - update["u"]).max() < step * 0.2
    assert np.abs(draws.mean(axis=0) - update["u"]).mean() < step * 0.03


def test_malformed_or_non_finite_arrays_are_refused():
    with pytest.raises(EncodingError, match="'w' holds non-finite"):
        encode_int8({"w": np.array([1.0] * 99 + [np.nan], dtype=np.float32)})
    encoded = encode_int8({"w": np.arange(100, dtype=np.float32)})
    with pytest.raises(EncodingError, match="no @range"):
        decode_int8({"w": encoded["w"]})
    with pytest.raises(EncodingError, match="has no codes"):
        decode_int8({"w" + RANGE_SUFFIX: encoded["w" + RANGE_SUFFIX]})
    with pytest.raises(EncodingError, match="not uint8 codes"):
        decode_int8({"w": encoded["w"].astype(np.int16), "w" + RANGE_SUFFIX: np.ones(2)})
    with pytest.raises(ValueError, match="update-encoding must be one of"):
        check_encoding("int4")


def test_facts_pack_to_a_quarter_and_unpack_only_within_bounds():
    facts = {"catalogue": [f"{85000 + i}{'ABC'[i % 3]}" for i in range(4000)], "cutoff": "x"}
    packed = wire.pack_facts(facts)
    assert len(packed) < len(json.dumps(facts)) / 3
    assert wire.unpack_facts(packed) == facts
    assert wire.facts_digest(facts) == wire.facts_digest(wire.unpack_facts(packed))
    with pytest.raises(ValueError, match="unreadable"):
        wire.unpack_facts(b"not zlib")
    with pytest.raises(ValueError, match="not a mapping"):
        wire.unpack_facts(zlib.compress(b"[1, 2]"))
    bomb = zlib.compress(b"[" + b" " * (wire.MAX_FACTS_BYTES + 10) + b"]")
    with pytest.raises(ValueError, match="exceed"):
        wire.unpack_facts(bomb)
