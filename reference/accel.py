"""Loader of the optional C accelerator (reference/_fast.c -> _natra_fast.so).

Owns: finding and loading the shared object with ctypes, pointing its
`struct natra_model` at a Tables' arrays, and the two calls (one frame, a
batch).
Rule: optional. Without the .so (`make reference/_natra_fast.so`) `bind`
returns None and the model runs its pure-Python spec; results are identical
(tests/test_reference_batch.py checks that).
Must not know: the policy itself (that is in engine.py and _fast.c).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

LIBRARY = Path(__file__).with_name("_natra_fast.so")
KEY_LEN = 40
_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_U64 = ctypes.c_uint64


class _ModelStruct(ctypes.Structure):
    _fields_ = [("config", _P), ("state", _P), ("sketch", _P), ("flows", _P), ("flow_keys", _P),
                ("counters", _P),
                ("width", ctypes.c_uint32), ("depth", ctypes.c_uint32),
                ("capacity", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def _load():
    if not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:
        return None
    lib.natra_step.restype = ctypes.c_int
    lib.natra_step.argtypes = [_P, ctypes.c_char_p, _U64, _U64, ctypes.c_uint32, ctypes.c_uint32, _P]
    lib.natra_run.restype = None
    lib.natra_run.argtypes = [_P, _I64] + [_P] * 10
    lib.natra_parse.restype = None
    lib.natra_parse.argtypes = [ctypes.c_char_p, _U64, _P, _P]
    lib.natra_parse_many.restype = None
    lib.natra_parse_many.argtypes = [_P, _P, _U64, _P, _P]
    return lib


_LIB = _load()


def available() -> bool:
    return _LIB is not None


def reload() -> bool:
    """Try loading again (after `make` built the .so in this process's lifetime)."""
    global _LIB
    if _LIB is None:
        _LIB = _load()
    return _LIB is not None


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


_L3_NAMES = (None, "ipv4", "ipv6")


class Parser:
    """reference/key.py's parse_frame, in C (tests/test_key.py compares the two)."""

    def __init__(self, lib):
        self._parse = lib.natra_parse
        self._many = lib.natra_parse_many
        self._key = ctypes.create_string_buffer(KEY_LEN)
        self._info = (ctypes.c_uint32 * 3)()
        self._key_ref, self._info_ref = ctypes.byref(self._key), ctypes.byref(self._info)

    def parse(self, frame: bytes):
        """(key, ecn, l3, l3_offset, flags), the fields of key.ParsedFrame."""
        self._parse(frame, len(frame), self._key_ref, self._info_ref)
        key = self._key.raw
        info = self._info
        return key, info[0], _L3_NAMES[info[1]], info[2], key[39]

    def parse_many(self, frames) -> tuple[np.ndarray, np.ndarray]:
        """(keys (n, 40) uint8, ecn uint8[n]) of many frames."""
        n = len(frames)
        data = np.frombuffer(b"".join(frames), dtype=np.uint8) if n else np.zeros(0, np.uint8)
        off = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(np.fromiter((len(f) for f in frames), dtype=np.uint64, count=n), out=off[1:])
        keys = np.empty((n, KEY_LEN), dtype=np.uint8)
        ecn = np.empty(n, dtype=np.uint8)
        if n:
            self._many(_ptr(data), _ptr(off), n, _ptr(keys), _ptr(ecn))
        return keys, ecn


def parser() -> Parser | None:
    """The C parser, or None when the .so is not built."""
    return Parser(_LIB) if _LIB is not None else None


class Accelerated:
    """The C step bound to one model's tables."""

    def __init__(self, lib, tables):
        self._lib, self._t = lib, tables
        t = tables
        for a in (t.config, t.state, t.sketch, t.flows, t.flow_keys, t.counters):
            if not a.flags.c_contiguous:
                raise ValueError("model tables must be C-contiguous for the accelerator")
        self._struct = _ModelStruct(_ptr(t.config), _ptr(t.state), _ptr(t.sketch), _ptr(t.flows),
                                    _ptr(t.flow_keys), _ptr(t.counters), t.width, t.depth, t.capacity, 0)
        self._ref = ctypes.byref(self._struct)
        self._est = _U64()
        self._est_ref = ctypes.byref(self._est)
        self._step = lib.natra_step

    def step(self, key: bytes, wire_len: int, now: int, direction: int, ect: bool) -> tuple[int, bool, int]:
        r = self._step(self._ref, key, wire_len, now, direction, 1 if ect else 0, self._est_ref)
        return r & 0xFF, bool(r >> 8), self._est.value

    def run(self, batch, h1: np.ndarray, h2: np.ndarray):
        from natra.reference.engine import BatchResult

        n = len(batch)
        verdicts = np.empty(n, dtype=np.uint8)
        heavy = np.empty(n, dtype=np.uint8)
        est = np.empty(n, dtype=np.uint64)
        h1 = np.ascontiguousarray(h1, dtype=np.uint32)
        h2 = np.ascontiguousarray(h2, dtype=np.uint32)
        self._lib.natra_run(
            self._ref, n, _ptr(batch.keys), _ptr(h1), _ptr(h2), _ptr(batch.now_ns), _ptr(batch.wire_len),
            _ptr(batch.direction), _ptr(batch.ect.view(np.uint8)), _ptr(verdicts), _ptr(heavy), _ptr(est))
        return BatchResult(verdicts, heavy.view(bool), est)


def bind(tables) -> Accelerated | None:
    """The accelerator for these tables, or None when the .so is not built."""
    return Accelerated(_LIB, tables) if _LIB is not None else None
