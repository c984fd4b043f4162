"""Cluster defaults from the conflist entry; per-Pod natra.io/ overrides that fail open."""

import pytest

from natra.cni.errors import CniError
from natra.cni.tuning import (
    ANNOTATION_KEYS,
    TUNING_KNOBS,
    Tuning,
    TuningError,
    cluster_settings,
    pod_tuning,
    read_duration,
)
from natra.kernel import params as P


def test_defaults_match_params():
    s = cluster_settings({})
    assert s.tuning == Tuning()
    assert (s.tuning.width, s.tuning.depth) == (P.DEFAULT_WIDTH, P.DEFAULT_DEPTH)
    assert s.tuning.window_ns is None  # the mode's default window (params_for)
    assert s.tuning.max_burst_time_ns == P.DEFAULT_BURST_TIME_NS
    assert s.attach_mode == "auto"
    # Shaping by default (docs/cni.md, "Mode"), with the data path's class count and queue bound.
    assert (s.tuning.mode, s.tuning.classes, s.tuning.queue_ns) == (P.MODE_SHAPE, P.DEFAULT_CLASSES,
                                                                    P.DEFAULT_QUEUE_NS)


def test_every_knob_from_the_conflist():
    s = cluster_settings({"width": 2048, "depth": 3, "threshold": "128Ki", "window": "50ms",
                          "maxBurstTime": "250ms", "reserve": "1Mi", "ecn": False, "flowTable": 512,
                          "attachMode": "clsact", "logFile": "/tmp/x.log", "logMaxBytes": 1000,
                          "bpffsRoot": "/sys/fs/bpf/t", "objectPath": "/o.o", "stateDir": "/s",
                          "mode": "police", "classes": 8, "queue": "50ms", "sketchLock": False})
    t = s.tuning
    assert (t.mode, t.classes, t.queue_ns, t.sketch_lock) == ("police", 8, 50_000_000, False)
    assert (t.width, t.depth, t.threshold_bytes, t.window_ns) == (2048, 3, 131072, 50_000_000)
    assert (t.max_burst_time_ns, t.reserve_bits, t.ecn, t.flow_table) == (250_000_000, 1048576, False, 512)
    assert (s.attach_mode, s.log_file, s.log_max_bytes) == ("clsact", "/tmp/x.log", 1000)
    assert (s.bpffs_root, s.object_path, s.state_dir) == ("/sys/fs/bpf/t", "/o.o", "/s")


def test_env_fallback_for_locations_and_config_wins():
    env = {"NATRA_BPFFS_ROOT": "/e", "NATRA_BPF_OBJECT": "/e.o", "NATRA_STATE_DIR": "/es"}
    s = cluster_settings({"bpffsRoot": "/c"}, env)
    assert (s.bpffs_root, s.object_path, s.state_dir) == ("/c", "/e.o", "/es")


@pytest.mark.parametrize("config", [
    {"width": 1000}, {"width": "wide"}, {"depth": 0}, {"depth": 99}, {"window": "10"}, {"window": "0s"},
    {"window": "2m"}, {"maxBurstTime": "1h"}, {"attachMode": "xdp"}, {"ecn": "yes"}, {"flowTable": 0},
    {"bpffsRoot": 5}, {"threshold": "1K"}, {"mode": "drop"}, {"mode": "Shape"}, {"mode": True},
    {"classes": 0}, {"classes": 33}, {"classes": "many"}, {"queue": "500us"}, {"queue": "2s"}, {"queue": "x"},
    {"sketchLock": "no"}, {"sketchLock": 0},
])
def test_bad_cluster_defaults_are_invalid_config(config):
    with pytest.raises(CniError) as excinfo:
        cluster_settings(config)
    assert excinfo.value.code == 7
    assert excinfo.value.details


@pytest.mark.parametrize("text, ns", [("100ms", 100_000_000), ("1.5s", 1_500_000_000), ("1m30s", 90 * 10**9),
                                      ("250us", 250_000), ("7ns", 7), (42, 42)])
def test_durations(text, ns):
    assert read_duration(text, "x") == ns


@pytest.mark.parametrize("text", ["", "1", "ms", "1ms2", "-1s", "1 s", True, 0, 1.5])
def test_bad_durations(text):
    with pytest.raises(TuningError):
        read_duration(text, "x")


def test_pod_overrides():
    base = cluster_settings({"width": 2048}).tuning
    tuning, notes = pod_tuning(base, {"natra.io/depth": "2", "natra.io/window": "200ms",
                                      "natra.io/ecn": "false", "natra.io/threshold": "1Mi",
                                      "natra.io/max-burst-time": "1s", "natra.io/reserve": "100k",
                                      "natra.io/flow-table": "64", "other/x": "y", "natra.io/mode": "police",
                                      "natra.io/classes": "4", "natra.io/queue": "1s",
                                      "natra.io/sketch-lock": "false"})
    assert notes == []
    assert (tuning.mode, tuning.classes, tuning.queue_ns, tuning.sketch_lock) == ("police", 4, 10**9, False)
    assert (tuning.width, tuning.depth, tuning.window_ns, tuning.ecn) == (2048, 2, 200_000_000, False)
    assert (tuning.threshold_bytes, tuning.max_burst_time_ns, tuning.reserve_bits, tuning.flow_table) == (
        1048576, 10**9, 100_000, 64)


def test_every_tuning_knob_has_an_annotation():
    assert set(ANNOTATION_KEYS.values()) == set(TUNING_KNOBS)


@pytest.mark.parametrize("annotations", [
    {"natra.io/width": "3"}, {"natra.io/depth": "x", "natra.io/width": "2048"},
    {"natra.io/window": "forever"},
    {"natra.io/ecn": "maybe"}, {"natra.io/mode": "fast"}, {"natra.io/classes": "64"},
    {"natra.io/queue": "0ms", "natra.io/mode": "police"}, {"natra.io/sketch-lock": "off"},
])
def test_malformed_annotation_fails_open_to_cluster_defaults(annotations):
    base = cluster_settings({"width": 512}).tuning
    tuning, notes = pod_tuning(base, annotations)
    assert tuning == base
    assert len(notes) == 1 and "malformed Natra annotation" in notes[0]


def test_unknown_natra_annotation_is_noted_and_others_apply():
    tuning, notes = pod_tuning(Tuning(), {"natra.io/colour": "blue", "natra.io/depth": "2"})
    assert tuning.depth == 2
    assert notes == ["ignored unknown annotation natra.io/colour"]


def test_params_kwargs_feed_params_for():
    tuning = Tuning(threshold_bytes=70_000, reserve_bits=300_000, max_burst_time_ns=100_000_000)
    p = P.params_for(10_000_000, 2**32 - 1, **tuning.params_kwargs())
    assert (p.threshold_bytes, p.reserve_bits) == (70_000, 300_000)
    assert p.burst_bits == P.default_burst_bits(10_000_000, 2**32 - 1, 100_000_000)
    assert (p.mode, p.classes, p.queue_ns) == (P.MODE_SHAPE, P.DEFAULT_CLASSES, P.DEFAULT_QUEUE_NS)
    unlocked = P.params_for(10_000_000, **Tuning(sketch_lock=False).params_kwargs())
    assert p.sketch_lock and not unlocked.sketch_lock
    police = P.params_for(10_000_000, 1000, **Tuning(mode="police", classes=3).params_kwargs())
    assert (police.mode, police.classes, police.burst_bits) == ("police", 3, P.POLICE_BURST_FLOOR_BITS)
