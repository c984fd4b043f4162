"""bench/peer_cost.py without the kernel: its frames, its handling of a peer it
cannot build, and the benchmarks section rendered from its committed record."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

peer_cost = pytest.importorskip("peer_cost")


def test_spread_frames_are_distinct_flows_of_one_template():
    frames = peer_cost.flow_frames(1024)
    assert len(set(frames)) == 1024
    assert all(len(f) == peer_cost.FRAME_LEN for f in frames)
    base = peer_cost.template_frame()
    differ = {i for f in frames[:300] for i in range(len(f)) if f[i] != base[i]}
    assert differ <= set(range(peer_cost.SADDR_AT + 2, peer_cost.SADDR_AT + 4)) | \
        set(range(peer_cost.SPORT_AT, peer_cost.SPORT_AT + 2))
    assert peer_cost.flow_frames(1) == [base]


def test_a_peer_that_does_not_build_is_reported_absent(tmp_path):
    bad = tmp_path / "natra.bpf.c"
    bad.write_text("this is not C\n")
    path, how = peer_cost.peer_object(str(bad), str(tmp_path))
    assert path is None and "clang failed" in how


def test_the_record_renders_as_section_9():
    from bench import report

    text = "\n".join(report.section_peer())
    assert text.startswith("## 9. Per-packet cost and BPF memory beside the original Go Natra")
    assert "| mouse | 65,536 |" in text and "At or below the peer" in text
    assert "natra defaults" in text and "peer" in text
    assert report.section_peer(str(ROOT / "no-such-record.json")) == []


def test_the_lock_cost_build_is_the_same_source_without_the_lock(tmp_path):
    """--lock-cost compiles bpf/natra.bpf.c without the lock's calls (measurement only)."""
    shipped = (ROOT / "natra" / "bpf" / "natra.bpf.o").read_bytes()
    no_lock = Path(peer_cost.build_no_lock(str(tmp_path))).read_bytes()
    # the unlock kfunc's name (the lock's is also the name of its struct, in the BTF of both)
    assert b"bpf_res_spin_unlock" in shipped
    assert b"bpf_res_spin_unlock" not in no_lock and b"natra_to_pod" in no_lock
    with pytest.raises(FileNotFoundError, match="--lock-cost needs"):
        peer_cost.build_no_lock(str(tmp_path), source=str(tmp_path / "absent.bpf.c"))


def test_modes_without_the_lock_are_labelled_and_never_shipped():
    assert peer_cost.mode_label("police_nolock") == "police-n"
    assert peer_cost.mode_label("shape_unlocked_shared") == "shape-u+s"
    assert not peer_cost.shipped("shape_nolock") and peer_cost.shipped("shape_unlocked")


def test_section_9_keeps_modes_without_the_lock_out_of_the_aim(tmp_path):
    import json

    from bench import report

    def cell(ns):
        return {"ns_above_trivial": ns, "rounds": [ns], "paths": {}}
    record = {"date_utc": "2026-12-07 00:00 UTC", "load_before": "0", "load_after": "0", "peer": "p",
              "rounds": 1, "machine": {"cpu": "c", "cpus": 2, "kernel": "k"},
              "modes": ["police", "police_nolock"],
              "results": {"mouse/1": {"trivial_ns": 1, "natra_police": cell(80.0),
                                      "natra_police_nolock": cell(50.0), "peer": cell(60.0)}}}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    text = "\n".join(report.section_peer(str(path)))
    assert "Natra police without the lock* ns" in text
    assert "police 0 of 1 cases." in text and "police_nolock" not in text.split("At or below")[1]
    assert "Measurement only (`--lock-cost`)" in text
