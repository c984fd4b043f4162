"""The sketch's hash: MurmurHash3 x86_32 and Kirsch-Mitzenmacher columns.

Owns: the bit-exact definition of which sketch cells a flow key touches
(docs/design.md, "The hash"): h1 = murmur3_32(key, SEED1), h2 = murmur3_32(key,
SEED2) | 1, column(row) = fmix32((h1 + row * h2) mod 2^32) & (width - 1).
Rule: 32-bit unsigned arithmetic everywhere, written from the public
description of the algorithm; tests/test_hashing.py pins it to published
vectors and checks the numpy version against the scalar one.
Must not know: what a key contains, the sketch's cells, the policy.
"""

from __future__ import annotations

import numpy as np

from natra.kernel import layout as L

MASK32 = 0xFFFFFFFF
C1 = 0xCC9E2D51
C2 = 0x1B873593
ROUND_ADD = 0xE6546B64
FMIX1 = 0x85EBCA6B
FMIX2 = 0xC2B2AE35
HASH_SEEDS = (L.HASH_SEED1, L.HASH_SEED2)
KEY_WORDS = 10  # a 40-byte flow key is ten little-endian 32-bit blocks, no tail


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & MASK32


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * FMIX1) & MASK32
    h ^= h >> 13
    h = (h * FMIX2) & MASK32
    h ^= h >> 16
    return h


def _mix_block(k: int) -> int:
    k = (k * C1) & MASK32
    k = _rotl32(k, 15)
    return (k * C2) & MASK32


def murmur3_32(data: bytes, seed: int) -> int:
    """MurmurHash3 x86_32 of any byte string."""
    h = seed & MASK32
    nblocks = len(data) // 4
    for i in range(nblocks):
        h ^= _mix_block(int.from_bytes(data[4 * i:4 * i + 4], "little"))
        h = _rotl32(h, 13)
        h = (h * 5 + ROUND_ADD) & MASK32
    tail = data[4 * nblocks:]
    if tail:
        h ^= _mix_block(int.from_bytes(tail, "little"))
    h ^= len(data) & MASK32
    return _fmix32(h)


def _rotl32_np(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def murmur3_32_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """murmur3_32 of each 40-byte row of `keys` ((n, 40) uint8) -> uint32[n]."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    if keys.ndim != 2 or keys.shape[1] != 4 * KEY_WORDS:
        raise ValueError(f"keys must have shape (n, {4 * KEY_WORDS}), got {keys.shape}")
    words = keys.view("<u4").astype(np.uint32)
    h = np.full(keys.shape[0], seed & MASK32, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for i in range(KEY_WORDS):
            k = words[:, i] * np.uint32(C1)
            k = _rotl32_np(k, 15) * np.uint32(C2)
            h ^= k
            h = _rotl32_np(h, 13) * np.uint32(5) + np.uint32(ROUND_ADD)
        h ^= np.uint32(4 * KEY_WORDS)
        h ^= h >> np.uint32(16)
        h *= np.uint32(FMIX1)
        h ^= h >> np.uint32(13)
        h *= np.uint32(FMIX2)
        h ^= h >> np.uint32(16)
    return h


def key_hashes(key: bytes) -> tuple[int, int]:
    """(h1, h2) of one flow key, h2 already forced odd."""
    return murmur3_32(key, L.HASH_SEED1), murmur3_32(key, L.HASH_SEED2) | 1


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
