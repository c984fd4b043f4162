"""natra/kernel/layout.py against bpf/natra.h and the compiled object's BTF.

Every #define of the header must equal the Python constant of the same name
(without the NATRA_ prefix), and every struct the object's BTF describes must
have the size, field names and field offsets of its ctypes mirror.
The BTF part needs the built object and bpftool; it skips without them.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from natra.kernel import layout as L

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "bpf" / "natra.h"
OBJECTS = [ROOT / "natra" / "bpf" / name for name in ("natra.bpf.o", "natra_trace.bpf.o",
                                                               "natra_compat.bpf.o")]
_DEFINE = re.compile(r"^#define\s+NATRA_(\w+)\s+(.+?)\s*(?:/\*.*)?$")
_INT_SUFFIX = re.compile(r"(?<=[0-9a-fA-F])(?:ULL|UL|LL|U|L)\b", re.IGNORECASE)
_ALLOWED = re.compile(r"^[0-9a-fA-Fx()<>+\-*/ ]+$")
NOT_CONSTANTS = {"H"}  # the include guard NATRA_H
# Structs the C program never names in BTF (only a local in the trace build):
# their size is pinned by _Static_assert in bpf/natra.bpf.c instead.
C_SIZES = {"natra_trace_rec": 16}


def header_defines() -> dict[str, int]:
    values = {}
    for line in HEADER.read_text().splitlines():
        m = _DEFINE.match(line.strip())
        if not m or m.group(1) in NOT_CONSTANTS:
            continue
        expr = _INT_SUFFIX.sub("", m.group(2))
        assert _ALLOWED.match(expr), f"unexpected #define NATRA_{m.group(1)} {m.group(2)}"
        values[m.group(1)] = eval(expr, {"__builtins__": {}})  # digits and operators only (checked)
    return values


def test_header_has_the_constants_we_expect():
    defines = header_defines()
    assert {"NDIRS", "MAX_DEPTH", "NCOUNTERS", "HASH_SEED1", "V_PASS_MOUSE", "C_FRAMES"} <= set(defines)


@pytest.mark.parametrize("name", sorted(header_defines()))
def test_every_define_equals_the_python_constant(name):
    assert hasattr(L, name), f"natra/kernel/layout.py lacks {name} (bpf/natra.h has NATRA_{name})"
    assert getattr(L, name) == header_defines()[name]


def test_verdict_counters_fit_before_the_parse_counters():
    assert L.verdict_bytes_index(L.NVERDICTS - 1) < L.C_FRAMES
    assert max(L.COUNTER_NAMES) < L.NCOUNTERS


def _btf_structs(obj: Path) -> dict[str, dict]:
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw", "-j"],
                         capture_output=True, text=True, check=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t["kind"] == "STRUCT" and t.get("name")}


@pytest.fixture(scope="module")
def btf() -> dict[str, dict]:
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed")
    missing = [str(o) for o in OBJECTS if not o.is_file()]
    if missing:
        pytest.skip(f"objects not built ({', '.join(missing)}); run make bpf")
    structs: dict[str, dict] = {}
    for obj in OBJECTS:
        for name, t in _btf_structs(obj).items():
            structs.setdefault(name, t)
    return structs


@pytest.mark.parametrize("name", sorted(L.STRUCTS))
def test_struct_layout_matches_btf(btf, name):
    mirror = L.STRUCTS[name]
    if name not in btf:
        assert name in C_SIZES, f"struct {name} is not in the objects' BTF"
        assert ctypes.sizeof(mirror) == C_SIZES[name]
        return
    t = btf[name]
    assert ctypes.sizeof(mirror) == t["size"], f"sizeof(struct {name})"
    btf_fields = [(m["name"], m["bits_offset"] // 8) for m in t["members"]]
    py_fields = [(f, getattr(mirror, f).offset) for f, *_ in mirror._fields_]
    assert py_fields == btf_fields
