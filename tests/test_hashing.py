"""The sketch hash (reference/hashing.py): published vectors and the numpy twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from natra.reference.hashing import columns, key_columns, key_hashes, murmur3_32, murmur3_32_keys

from natra.kernel import layout as L

# The table of docs/design.md: published MurmurHash3 x86_32 results.
VECTORS = [
    (b"", 0, 0x00000000),
    (b"", 1, 0x514E28B7),
    (b"", 0xFFFFFFFF, 0x81F16F39),
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
    (b"aaaa", 0x9747B28C, 0x5A97808A),
    (b"Hello, world!", 0x9747B28C, 0x24884CBA),
    (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
]


@pytest.mark.parametrize("data,seed,expected", VECTORS)
def test_published_vectors(data, seed, expected):
    assert murmur3_32(data, seed) == expected


def test_design_table_matches_these_vectors():
    """docs/design.md publishes the same table the tests pin (no silent drift)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    for _, _, expected in VECTORS:
        assert f"0x{expected:08x}" in text


@given(st.lists(st.binary(min_size=40, max_size=40), min_size=1, max_size=50), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_numpy_hash_equals_scalar(keys, seed):
    arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 40)
    assert murmur3_32_keys(arr, seed).tolist() == [murmur3_32(k, seed) for k in keys]


@given(st.binary(min_size=40, max_size=40), st.sampled_from([1, 2, 1024, 65536]), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_columns_double_hashing(key, width, depth):
    h1, h2 = key_hashes(key)
    assert h1 == murmur3_32(key, L.HASH_SEED1) and h2 == murmur3_32(key, L.HASH_SEED2) | 1
    expected = [_fmix32_reference((h1 + row * h2) % 2**32) % width for row in range(depth)]
    assert key_columns(key, width, depth) == expected
    assert columns(np.array([h1]), np.array([h2 & ~1]), width, depth)[0].tolist() == expected


def _fmix32_reference(h: int) -> int:
    """MurmurHash3's finaliser, written out here independently of the module."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % 2**32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % 2**32
    return h ^ (h >> 16)


def test_rows_are_not_all_determined_by_low_bits():
    """Regression (simulations, 100k flows): with bare (h1 + row*h2) & (W-1), pairs that
    share a column in row 0 and row 1 shared it in every row (~n^2/2/W^2 pairs).
    With the finaliser a pair collides in all 4 rows about n^2/2/W^4 times: ~0 here."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 256, size=(20_000, 40), dtype=np.uint8)
    cols = columns(murmur3_32_keys(keys, L.HASH_SEED1), murmur3_32_keys(keys, L.HASH_SEED2), 1024, 4)
    packed = (cols[:, 0] << 30) | (cols[:, 1] << 20) | (cols[:, 2] << 10) | cols[:, 3]
    _, counts = np.unique(packed, return_counts=True)
    full_collision_pairs = int((counts * (counts - 1) // 2).sum())
    assert full_collision_pairs <= 2


def _murmur3_32_reference(data: bytes, seed: int) -> int:
    """MurmurHash3 x86_32 written out here from Appleby's published algorithm, independently of
    reference/hashing.py (tail bytes included, so the published vectors check it too)."""
    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) % 2**32

    def mix(k: int) -> int:
        return rotl(k * 0xCC9E2D51 % 2**32, 15) * 0x1B873593 % 2**32

    h = seed
    blocks = len(data) // 4
    for i in range(blocks):
        h = (rotl(h ^ mix(int.from_bytes(data[4 * i:4 * i + 4], "little")), 13) * 5 + 0xE6546B64) % 2**32
    tail = data[4 * blocks:]
    if tail:
        h ^= mix(int.from_bytes(tail, "little"))
    return _fmix32_reference(h ^ len(data))


@pytest.mark.parametrize("data,seed,expected", VECTORS)
def test_the_independent_reference_meets_the_published_vectors(data, seed, expected):
    assert _murmur3_32_reference(data, seed) == expected


# (key, h1, h2) of two keys, computed by _murmur3_32_reference with the seeds of bpf/natra.h.
# bytes(range(40)) has ten distinct blocks, so a change of block order or byte order shows.
PINNED_KEYS = [
    (bytes(40), 0x0480A198, 0xF6A5A7C3),
    (bytes(range(40)), 0xA2D86380, 0x6EA99953),
]


@pytest.mark.parametrize("key,h1,h2", PINNED_KEYS)
def test_key_hashes_pinned(key, h1, h2):
    """The flow-key hashes are fixed numbers, from an implementation that shares no code with
    the model, with the seeds the C program is compiled with."""
    assert (_murmur3_32_reference(key, 0x4E415452), _murmur3_32_reference(key, 0x41534B45) | 1) == (h1, h2)
    assert key_hashes(key) == (h1, h2)
    assert murmur3_32_keys(np.frombuffer(key, np.uint8).reshape(1, 40), L.HASH_SEED1)[0] == h1


def test_seeds_are_the_c_programs():
    """The model's seeds are bpf/natra.h's (the kernel twin hashes with these)."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "bpf" / "natra.h").read_text()
    seeds = dict(re.findall(r"#define (NATRA_HASH_SEED[12]) (0x[0-9a-f]+)u", header))
    assert (int(seeds["NATRA_HASH_SEED1"], 16), int(seeds["NATRA_HASH_SEED2"], 16)) == \
        (L.HASH_SEED1, L.HASH_SEED2) == (0x4E415452, 0x41534B45)


@given(st.binary(min_size=40, max_size=40))
@settings(max_examples=200, deadline=None)
def test_key_hashes_equal_the_independent_reference(key):
    assert key_hashes(key) == (_murmur3_32_reference(key, L.HASH_SEED1),
                               _murmur3_32_reference(key, L.HASH_SEED2) | 1)
