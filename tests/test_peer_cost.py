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
