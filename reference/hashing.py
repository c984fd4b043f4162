"""The sketch's hash: vector multiply-shift and Kirsch-Mitzenmacher columns.

Owns: the bit-exact definition of which sketch cells a flow key touches
(docs/design.md, "The hash"): flow_hash(key, seed) = ((b + sum_i m_i * w_i)
mod 2^64) >> 32 over the key's ten little-endian u32 words, its multipliers
and offset the first eleven SplitMix64 outputs of the seed; h1 =
flow_hash(key, SEED1), h2 = flow_hash(key, SEED2) | 1, column(row) =
fmix32((h1 + row * h2) mod 2^32) & (width - 1).
Rule: unsigned arithmetic masked to its width everywhere; tests/test_hashing.py
pins it to an implementation that shares no code with this one and checks the
numpy version against the scalar one.
Must not know: what a key contains, the sketch's cells, the policy.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from natra.kernel import layout as L

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
FMIX1 = 0x85EBCA6B
FMIX2 = 0xC2B2AE35
HASH_SEEDS = (L.HASH_SEED1, L.HASH_SEED2)
KEY_WORDS = 10  # a 40-byte flow key is ten little-endian 32-bit words
KEY_LEN = 4 * KEY_WORDS


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * FMIX1) & MASK32
    h ^= h >> 13
    h = (h * FMIX2) & MASK32
    h ^= h >> 16
    return h


def splitmix64(seed: int, i: int) -> int:
    """Output i (from 0) of SplitMix64 whose state starts at `seed`."""
    z = (seed + (i + 1) * L.SPLITMIX_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@cache
def hash_words(seed: int) -> tuple[tuple[int, ...], int]:
    """(the ten multipliers, the offset) of the hash with this seed."""
    return tuple(splitmix64(seed, i) for i in range(KEY_WORDS)), splitmix64(seed, L.HASH_OFFSET)


def flow_hash(key: bytes, seed: int) -> int:
    """The 32-bit hash of one 40-byte flow key."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a flow key is {KEY_LEN} bytes, got {len(key)}")
    mults, total = hash_words(seed)
    for i, m in enumerate(mults):
        total += m * int.from_bytes(key[4 * i:4 * i + 4], "little")
    return (total & MASK64) >> 32


def flow_hash_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """flow_hash of each 40-byte row of `keys` ((n, 40) uint8) -> uint32[n]."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    if keys.ndim != 2 or keys.shape[1] != KEY_LEN:
        raise ValueError(f"keys must have shape (n, {KEY_LEN}), got {keys.shape}")
    words = keys.view("<u4").astype(np.uint64)
    mults, offset = hash_words(seed)
    total = np.full(keys.shape[0], offset, dtype=np.uint64)
    for i, m in enumerate(mults):
        total += words[:, i] * np.uint64(m)  # uint64 arrays wrap: mod 2^64
    return (total >> np.uint64(32)).astype(np.uint32)


def key_hashes(key: bytes) -> tuple[int, int]:
    """(h1, h2) of one flow key, h2 already forced odd."""
    return flow_hash(key, L.HASH_SEED1), flow_hash(key, L.HASH_SEED2) | 1


def _fmix32_np(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(FMIX1)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(FMIX2)
        return h ^ (h >> np.uint32(16))


def columns(h1, h2, width: int, depth: int) -> np.ndarray:
    """Column of each row: fmix32((h1 + row * (h2 | 1)) mod 2^32) & (width - 1) -> (n, depth).

    The finaliser makes each row's column depend on all 32 bits of the sum: with
    the bare sum, two keys whose h1 and h2 agree in their low bits would share a
    column in every row (the simulations found thousands of such pairs among
    100k flows); with it, a full collision needs h1 and h2 to agree entirely.
    """
    h1 = np.atleast_1d(np.asarray(h1, dtype=np.uint64))
    h2 = np.atleast_1d(np.asarray(h2, dtype=np.uint64)) | np.uint64(1)
    rows = np.arange(depth, dtype=np.uint64)
    total = ((h1[:, None] + rows[None, :] * h2[:, None]) & np.uint64(MASK32)).astype(np.uint32)
    return (_fmix32_np(total) & np.uint32(width - 1)).astype(np.uint64)


def key_columns(key: bytes, width: int, depth: int) -> list[int]:
    """The scalar twin of `columns` for one key."""
    return hash_columns(*key_hashes(key), width, depth)


def hash_columns(h1: int, h2: int, width: int, depth: int) -> list[int]:
    """The scalar twin of `columns` for one key's hashes (the per-packet spec path)."""
    h2 |= 1
    return [_fmix32((h1 + row * h2) & MASK32) & (width - 1) for row in range(depth)]
