"""Raw tensor encoding round trips for every V2 datatype, and clear errors for bad bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtimes.datatypes import ALL_DATATYPES, V2_TO_NUMPY, decode_raw, encode_raw, v2_datatype_of
from runtimes.errors import InvalidInput

FIXED = [d for d in ALL_DATATYPES if d not in ("BYTES", "BF16")]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), datatype=st.sampled_from(FIXED))
def test_fixed_size_round_trip(data, datatype):
    dtype = V2_TO_NUMPY[datatype]
    array = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
    decoded = decode_raw("x", datatype, list(array.shape), encode_raw(array))
    assert decoded.dtype == dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()
    assert v2_datatype_of(decoded) == datatype


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.binary(max_size=20), min_size=1, max_size=8))
def test_bytes_round_trip(items):
    array = np.empty(len(items), dtype=object)
    array[:] = items
    decoded = decode_raw("s", "BYTES", [len(items)], encode_raw(array))
    assert list(decoded) == items


def test_bf16_round_trip_keeps_values():
    array = np.array([1.5, -2.0, 0.15625], dtype=V2_TO_NUMPY["BF16"])
    decoded = decode_raw("b", "BF16", [3], encode_raw(array))
    assert decoded.astype(np.float32).tolist() == [1.5, -2.0, 0.15625]


def test_raw_size_mismatch_names_input_and_expected_size():
    with pytest.raises(InvalidInput, match=r"input 'x'.*7 bytes, expected 8"):
        decode_raw("x", "FP32", [2], b"\0" * 7)


@pytest.mark.parametrize("raw, message", [
    (b"\x05\x00", "truncated length prefix"),
    (struct.pack("<I", 9) + b"abc", "says 9 bytes"),
    (struct.pack("<I", 1) + b"a", "1 BYTES elements, expected 2"),
])
def test_malformed_bytes_are_refused(raw, message):
    with pytest.raises(InvalidInput, match=message):
        decode_raw("s", "BYTES", [2], raw)


def test_unknown_datatype_lists_the_known_ones():
    with pytest.raises(InvalidInput, match="unknown datatype 'FP8'.*FP32"):
        decode_raw("x", "FP8", [1], b"\0")


def test_negative_dimension_is_refused():
    with pytest.raises(InvalidInput, match="negative"):
        decode_raw("x", "FP32", [-1], b"")
