"""8-bit encoding of the weights and updates that train messages carry.

A train instruction carries the global weights and a train reply the site's result, each
as dense float32 by default: 4 bytes per parameter each way. With ``update-encoding =
"int8"`` (:data:`INT8`) both travel as one byte per parameter:

- **server → site**: the global weights, rounded to the nearest of 256 evenly spaced
  levels between each array's minimum and maximum (:func:`encode_int8` without a random
  generator). The site trains from these decoded weights ``G̃``.
- **site → server**: the site's *update* ``W − G̃`` (its trained weights minus what it
  received), with stochastic rounding (unbiased: the expected decoded value is the exact
  one), so the rounding errors of many sites average out instead of adding up. The server
  adds the decoded update to its own exact global weights ``G``, so the download's rounding
  never accumulates over rounds.

Each encoded array travels as ``uint8`` codes under its own name plus
``<name>@range`` = ``[low, step]`` (float32), decoded as ``low + code × step``; arrays of
fewer than :data:`MIN_ENCODED_VALUES` values (biases, tiny models) stay float32.

Privacy: the site encodes after DP-SGD has clipped and noised its training; encoding is
post-processing of the DP output with randomness independent of the data, so it costs no
ε (Dwork & Roth 2014, Prop. 2.1). The rounding is bounded by half a step (nearest) or one
step (stochastic) per coordinate, a 1/255 share of the array's range.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

FLOAT32 = "float32"
INT8 = "int8"
UPDATE_ENCODINGS = (FLOAT32, INT8)
"""Values of the run-config key ``update-encoding`` (:data:`common.wire.UPDATE_ENCODING`)."""

RANGE_SUFFIX = "@range"
LEVELS = 255
"""Steps between an array's minimum and maximum (256 codes, one byte each)."""
MIN_ENCODED_VALUES = 64
"""Smaller arrays travel as float32: their ``[low, step]`` entry (about 70 bytes on the
wire with its name and metadata) would cost more than the 3 bytes per value saved."""


class EncodingError(ValueError):
    """Arrays that cannot be encoded (non-finite) or decoded (malformed)."""


def encode_int8(
    arrays: Mapping[str, np.ndarray], rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """``arrays`` as one byte per value plus each array's ``[low, step]``.

    Args:
        arrays: name -> floating-point array (other dtypes, and arrays smaller than
            :data:`MIN_ENCODED_VALUES`, travel unchanged).
        rng: stochastic rounding with this generator; ``None`` rounds to nearest.

    Raises:
        EncodingError: an array holds NaN or infinity.
    """
    encoded: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating) or array.size < MIN_ENCODED_VALUES:
            encoded[name] = array
            continue
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise EncodingError(f"array {name!r} holds non-finite values")
        low = float(values.min())
        step = (float(values.max()) - low) / LEVELS
        scaled = (values - low) / step if step > 0 else np.zeros_like(values)
        if rng is None:
            codes = np.rint(scaled)
        else:
            floor = np.floor(scaled)
            codes = floor + (rng.random(scaled.shape) < scaled - floor)
        encoded[name] = np.clip(codes, 0, LEVELS).astype(np.uint8)
        encoded[name + RANGE_SUFFIX] = np.array([low, step], dtype=np.float32)
    return encoded


def decode_int8(encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 arrays :func:`encode_int8` encoded (unencoded arrays pass through).

    Raises:
        EncodingError: codes without a range, a range without codes, or a malformed range.
    """
    ranges = {n.removesuffix(RANGE_SUFFIX) for n in encoded if n.endswith(RANGE_SUFFIX)}
    decoded: dict[str, np.ndarray] = {}
    for name, array in encoded.items():
        if name.endswith(RANGE_SUFFIX):
            if name.removesuffix(RANGE_SUFFIX) not in encoded:
                raise EncodingError(f"range {name!r} has no codes")
            continue
        if name not in ranges:
            if array.dtype == np.uint8:
                raise EncodingError(f"uint8 array {name!r} has no {RANGE_SUFFIX}")
            decoded[name] = array
            continue
        bounds = encoded[name + RANGE_SUFFIX]
        if array.dtype != np.uint8 or bounds.shape != (2,) or not np.isfinite(bounds).all():
            raise EncodingError(f"array {name!r} is not uint8 codes with a [low, step] range")
        low, step = (float(b) for b in bounds)
        decoded[name] = (low + array.astype(np.float64) * step).astype(np.float32)
    return decoded


def check_encoding(encoding: str) -> str:
    """``encoding`` if it is one of :data:`UPDATE_ENCODINGS`.

    Raises:
        ValueError: naming the allowed values.
    """
    if encoding not in UPDATE_ENCODINGS:
        raise ValueError(f"update-encoding must be one of {UPDATE_ENCODINGS}, got {encoding!r}")
    return encoding
