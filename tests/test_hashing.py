"""The sketch hash (reference/hashing.py): its definition, pinned values, the numpy twin, and the
property the design rests on (strong universality of vector multiply-shift)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from natra.reference.hashing import (
    columns,
    flow_hash,
    flow_hash_keys,
    key_columns,
    key_hashes,
    splitmix64,
)

from natra.kernel import layout as L

# Published SplitMix64 outputs (Vigna's splitmix64.c): state 0, and the test seed 1234567.
SPLITMIX_VECTORS = [
    (0, [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]),
    (1234567, [6457827717110365317, 3203168211198807973, 9817491932198370423]),
]


@pytest.mark.parametrize("seed,outputs", SPLITMIX_VECTORS)
def test_splitmix64_published_outputs(seed, outputs):
    assert [splitmix64(seed, i) for i in range(len(outputs))] == outputs


def _splitmix64_reference(seed: int, count: int) -> list[int]:
    """SplitMix64 as a generator with state, written out here independently of the module."""
    out, state = [], seed
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        z = state
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB % 2**64
        out.append(z ^ (z >> 31))
    return out


def _flow_hash_reference(key: bytes, seed: int) -> int:
    """The hash from its definition in docs/design.md, with Python's unbounded integers."""
    words = [int.from_bytes(key[4 * i:4 * i + 4], "little") for i in range(10)]
    *mults, offset = _splitmix64_reference(seed, 11)
    return (offset + sum(m * w for m, w in zip(mults, words, strict=True))) % 2**64 // 2**32


@pytest.mark.parametrize("seed,outputs", SPLITMIX_VECTORS)
def test_the_independent_reference_meets_the_published_outputs(seed, outputs):
    assert _splitmix64_reference(seed, len(outputs)) == outputs


# (key, h1, h2) computed by _flow_hash_reference with the seeds of bpf/natra.h, and published in
# docs/design.md. bytes(range(40)) has ten distinct words, so a change of word or byte order shows.
PINNED_KEYS = [
    (bytes(40), 0x3DC8E5DF, 0xA2630CE3),
    (bytes(range(40)), 0x25872777, 0xAC73EBD7),
    (b"\xff" * 40, 0xA38945A3, 0x0A67D2A9),
]


@pytest.mark.parametrize("key,h1,h2", PINNED_KEYS)
def test_key_hashes_pinned(key, h1, h2):
    """The flow-key hashes are fixed numbers, from an implementation that shares no code with
    the model, with the seeds the C program is compiled with."""
    assert (_flow_hash_reference(key, 0x4E415452), _flow_hash_reference(key, 0x41534B45) | 1) == (h1, h2)
    assert key_hashes(key) == (h1, h2)
    assert flow_hash_keys(np.frombuffer(key, np.uint8).reshape(1, 40), L.HASH_SEED1)[0] == h1


def test_design_table_matches_the_pinned_keys():
    """docs/design.md publishes the values the tests pin (no silent drift)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    for _, h1, h2 in PINNED_KEYS:
        assert f"0x{h1:08x}" in text and f"0x{h2:08x}" in text


@given(st.binary(min_size=40, max_size=40))
@settings(max_examples=200, deadline=None)
def test_key_hashes_equal_the_independent_reference(key):
    assert key_hashes(key) == (_flow_hash_reference(key, L.HASH_SEED1),
                               _flow_hash_reference(key, L.HASH_SEED2) | 1)


@given(st.lists(st.binary(min_size=40, max_size=40), min_size=1, max_size=50), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_numpy_hash_equals_scalar(keys, seed):
    arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 40)
    assert flow_hash_keys(arr, seed).tolist() == [flow_hash(k, seed) for k in keys]


def test_a_key_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="40 bytes"):
        flow_hash(bytes(39), L.HASH_SEED1)
    with pytest.raises(ValueError, match=r"shape \(n, 40\)"):
        flow_hash_keys(np.zeros((2, 39), np.uint8), L.HASH_SEED1)


def test_seeds_are_the_c_programs():
    """The model's seeds are bpf/natra.h's (the kernel twin hashes with these)."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "bpf" / "natra.h").read_text()
    seeds = dict(re.findall(r"#define (NATRA_HASH_SEED[12]) (0x[0-9a-f]+)u", header))
    assert (int(seeds["NATRA_HASH_SEED1"], 16), int(seeds["NATRA_HASH_SEED2"], 16)) == \
        (L.HASH_SEED1, L.HASH_SEED2) == (0x4E415452, 0x41534B45)


def _fmix32_reference(h: int) -> int:
    """MurmurHash3's finaliser, written out here independently of the module."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % 2**32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % 2**32
    return h ^ (h >> 16)


@given(st.binary(min_size=40, max_size=40), st.sampled_from([1, 2, 1024, 65536]), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_columns_double_hashing(key, width, depth):
    h1, h2 = key_hashes(key)
    assert h1 == flow_hash(key, L.HASH_SEED1) and h2 == flow_hash(key, L.HASH_SEED2) | 1
    expected = [_fmix32_reference((h1 + row * h2) % 2**32) % width for row in range(depth)]
    assert key_columns(key, width, depth) == expected
    assert columns(np.array([h1]), np.array([h2 & ~1]), width, depth)[0].tolist() == expected


def test_rows_are_not_all_determined_by_low_bits():
    """Regression (simulations, 100k flows): with bare (h1 + row*h2) & (W-1), pairs that
    share a column in row 0 and row 1 shared it in every row (~n^2/2/W^2 pairs).
    With the finaliser a pair collides in all 4 rows about n^2/2/W^4 times: ~0 here."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 256, size=(20_000, 40), dtype=np.uint8)
    cols = columns(flow_hash_keys(keys, L.HASH_SEED1), flow_hash_keys(keys, L.HASH_SEED2), 1024, 4)
    packed = (cols[:, 0] << 30) | (cols[:, 1] << 20) | (cols[:, 2] << 10) | cols[:, 3]
    _, counts = np.unique(packed, return_counts=True)
    full_collision_pairs = int((counts * (counts - 1) // 2).sum())
    assert full_collision_pairs <= 2


def _ipv4_keys(n: int, vary: str) -> np.ndarray:
    """n IPv4 flow keys as the parser builds them, one field counting up from a fixed flow."""
    keys = np.zeros((n, 40), dtype=np.uint8)
    keys[:, 10:12] = 0xFF
    keys[:, 12:16] = (10, 0, 0, 1)
    keys[:, 26:28] = 0xFF
    keys[:, 28:32] = (10, 0, 1, 1)
    keys[:, 32:34] = (0x9C, 0x40)  # sport 40000
    keys[:, 34:36] = (0x01, 0xBB)  # dport 443
    keys[:, 36:38] = (0x08, 0x00)
    keys[:, 38] = 6
    i = np.arange(n, dtype=np.uint32)
    if vary == "sport":
        keys[:, 32], keys[:, 33] = i >> 8, i & 0xFF
    else:  # the client's address: 10.x.y.z
        keys[:, 13], keys[:, 14], keys[:, 15] = (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF
    return keys


@pytest.mark.parametrize("vary", ["sport", "saddr"])
def test_flows_a_field_apart_spread_over_the_flow_slots(vary):
    """The flow table's slot is h1 & (slots - 1). Flows that differ in one field only (a client's
    ports, or its addresses) are the common case; their slots must look like a random
    assignment: 65,536 flows into 1,024 slots put 64 in each, and a random assignment would put
    at most ~100 in the fullest slot."""
    h1 = flow_hash_keys(_ipv4_keys(65_536, vary), L.HASH_SEED1)
    load = np.bincount(h1 & 1023, minlength=1024)
    assert load.max() <= 100 and load.min() >= 30
    assert len(np.unique(h1)) >= 65_536 - 2  # ~0.5 32-bit collisions expected among 65,536


def _multiply_shift_pairs(w: int, out: int, wbar: int, x, y) -> np.ndarray:
    """Over every choice of (a0, a1, b) in [2^wbar]^3, how often each pair of `out`-bit values
    ((a0 x0 + a1 x1 + b) mod 2^wbar) >> (wbar - out) occurs for the keys x and y."""
    size = 1 << wbar
    a0, a1, b = (g.ravel() for g in np.meshgrid(*[np.arange(size, dtype=np.int64)] * 3, indexing="ij"))

    def h(k):
        return ((a0 * k[0] + a1 * k[1] + b) % size) >> (wbar - out)

    return np.bincount(h(x) * (1 << out) + h(y), minlength=1 << (2 * out))


MINIATURE_PAIRS = [((0, 0), (0, 1)), ((1, 0), (0, 1)), ((15, 15), (0, 0)), ((3, 5), (3, 13)),
                   ((8, 0), (0, 8)), ((7, 9), (9, 7))]


@pytest.mark.parametrize("x,y", MINIATURE_PAIRS)
def test_vector_multiply_shift_is_strongly_universal_in_miniature(x, y):
    """The design's claim (docs/design.md, "The hash"): with words of w bits, an out-bit result and
    wbar >= w + out - 1 bits of arithmetic, two distinct keys' hashes are independent and uniform
    over the random choice of multipliers and offset. Natra uses w = 32, out = 32, wbar = 64; here
    the same family in miniature (w = 4, out = 4, wbar = 7, two words), every choice enumerated:
    each of the 256 pairs of values occurs equally often."""
    joint = _multiply_shift_pairs(4, 4, 7, x, y)
    assert joint.min() == joint.max()


def test_one_bit_less_of_arithmetic_is_not_enough():
    """The check above can tell: with wbar = w + out - 2 some pairs of keys (those whose words
    differ by multiples of 8 here) get some pairs of values never and others twice as often."""
    uneven = [(x, y) for x, y in MINIATURE_PAIRS
              if (lambda j: j.min() != j.max())(_multiply_shift_pairs(4, 4, 6, x, y))]
    assert uneven == [((3, 5), (3, 13)), ((8, 0), (0, 8))]
