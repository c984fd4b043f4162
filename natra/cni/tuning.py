"""Natra's knobs: cluster defaults from the conflist entry, per-Pod overrides from annotations.

Owns: the plugin config keys (see docs/cni.md):
  width, depth, threshold, window, maxBurstTime, reserve, ecn, flowTable,
  mode, classes, queue, sketchLock
    (data-path tuning, the defaults of every Pod),
  attachMode, logFile, logMaxBytes, bpffsRoot, objectPath, stateDir
    (where and how the plugin works; the last three also from NATRA_BPFFS_ROOT,
    NATRA_BPF_OBJECT and NATRA_STATE_DIR when the config does not set them),
and the per-Pod annotations `natra.io/<knob>` delivered by the
`io.kubernetes.cri.pod-annotations` capability (ANNOTATION_KEYS below).
Rule: a bad cluster default is an invalid config (code 7: the operator must
see it); a bad Pod annotation is only a note, and the Pod gets the cluster
defaults (fail open). Notes quote natra.io/ values only.
Must not know: limits, the kernel, CNI commands.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from math import ceil

from natra.cni.errors import CniError, Kind
from natra.cni.quantity import QuantityError, parse_quantity
from natra.kernel import layout as L
from natra.kernel import params as P

ANNOTATION_PREFIX = "natra.io/"
ATTACH_MODES = ("auto", "tcx", "clsact")
DEFAULT_LOG_FILE = "/var/log/natra/cni.log"
# Enough for days of Pod churn at one line per call; one rotated copy is kept.
DEFAULT_LOG_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_STATE_DIR = "/run/natra/cni"
MAX_BURST_TIME_NS = 10 * L.NS_PER_SEC  # longer is line rate for seconds, the bug we clamp
MIN_BURST_TIME_NS = 1_000_000  # 1 ms

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": L.NS_PER_SEC,
                   "m": 60 * L.NS_PER_SEC, "h": 3600 * L.NS_PER_SEC}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")


class TuningError(ValueError):
    """A knob value Natra cannot use; the message names the knob."""


@dataclass(frozen=True)
class Tuning:
    """Data-path knobs of one Pod (both directions share the sketch shape)."""

    width: int = P.DEFAULT_WIDTH  # sketch columns, power of two
    depth: int = P.DEFAULT_DEPTH  # sketch rows
    threshold_bytes: int | None = None  # bytes per window; None: 1 % of the rate, >= 64 KiB
    # ns; None: the mode's default (police 100 ms; shape 100 ms or 16 thresholds of rate)
    window_ns: int | None = None
    max_burst_time_ns: int = P.DEFAULT_BURST_TIME_NS  # ns of rate a burst may hold at most
    reserve_bits: int | None = None  # bits; None: 5 % of the burst, >= two GSO packets
    ecn: bool = True
    flow_table: int | None = None  # heavy-flow entries per Pod; None: sized from the limits
    # "shape" (HTB queues, the default: docs/cni.md says why) or "police" (drops in the program).
    mode: str = P.MODE_SHAPE
    classes: int = P.DEFAULT_CLASSES  # shaping: heavy classes (per-flow queues) per direction
    queue_ns: int = P.DEFAULT_QUEUE_NS  # shaping: ns of rate a class may queue
    sketch_lock: bool = True  # shaping: False steps the sketch unlocked (cheaper, weaker if concurrent)

    def params_kwargs(self) -> dict:
        """Keyword arguments for natra.kernel.params.params_for (a fresh dict each call)."""
        kwargs = {"width": self.width, "depth": self.depth,
                  "burst_time_ns": self.max_burst_time_ns, "ecn": self.ecn, "mode": self.mode,
                  "classes": self.classes, "queue_ns": self.queue_ns, "sketch_lock": self.sketch_lock}
        if self.window_ns is not None:
            kwargs["window_ns"] = self.window_ns
        if self.threshold_bytes is not None:
            kwargs["threshold_bytes"] = self.threshold_bytes
        if self.reserve_bits is not None:
            kwargs["reserve_bits"] = self.reserve_bits
        return kwargs

    def validate(self) -> Tuning:
        checks = [
            (self.width > 0 and self.width & (self.width - 1) == 0 and self.width <= L.MAX_WIDTH,
             f"width {self.width} must be a power of two <= {L.MAX_WIDTH}"),
            (1 <= self.depth <= L.MAX_DEPTH, f"depth {self.depth} outside 1..{L.MAX_DEPTH}"),
            (self.threshold_bytes is None or self.threshold_bytes >= 1,
             f"threshold {self.threshold_bytes} bytes must be >= 1"),
            (self.window_ns is None or P.MIN_WINDOW_NS <= self.window_ns <= P.MAX_WINDOW_NS,
             f"window {self.window_ns} ns outside 1ms..60s"),
            (MIN_BURST_TIME_NS <= self.max_burst_time_ns <= MAX_BURST_TIME_NS,
             f"maxBurstTime {self.max_burst_time_ns} ns outside 1ms..10s"),
            (self.reserve_bits is None or 0 <= self.reserve_bits <= L.MAX_BURST_BITS,
             f"reserve {self.reserve_bits} bits outside 0..2^34"),
            (self.flow_table is None or 1 <= self.flow_table <= P.MAX_FLOW_TABLE,
             f"flowTable {self.flow_table} outside 1..{P.MAX_FLOW_TABLE}"),
            (self.mode in P.MODES, f"mode {self.mode!r} must be one of {', '.join(P.MODES)}"),
            (1 <= self.classes <= L.MAX_CLASSES, f"classes {self.classes} outside 1..{L.MAX_CLASSES}"),
            (P.MIN_QUEUE_NS <= self.queue_ns <= P.MAX_QUEUE_NS,
             f"queue {self.queue_ns} ns outside 1ms..1s"),
        ]
        for ok, message in checks:
            if not ok:
                raise TuningError(message)
        return self


@dataclass(frozen=True)
class Settings:
    """Everything the conflist entry says: Pod defaults plus where the plugin works."""

    tuning: Tuning = Tuning()
    attach_mode: str = "auto"
    log_file: str = DEFAULT_LOG_FILE  # "" disables the log file
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    bpffs_root: str | None = None  # None: the data path's default
    object_path: str | None = None  # None: the object shipped in the package
    state_dir: str = DEFAULT_STATE_DIR  # fail-open markers


# ---- value readers: each takes a JSON or annotation value and a knob name ----

MAX_DURATION_NS = 2**63  # beyond this a duration is no window or interval (and may be inf)


def read_duration(value, knob: str) -> int:
    """ns from an integer (ns) or Go duration text ('100ms', '1.5s', '1m30s')."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value:
        pos, total = 0, 0.0
        parts = list(_DURATION_PART.finditer(value))
        if parts and "".join(m.group(0) for m in parts) == value:
            for match in parts:
                total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos == len(value) and 0 < total < MAX_DURATION_NS:
                return round(total)
    raise TuningError(f"{knob} must be a duration like '100ms' or a positive integer of ns")


def read_count(value, knob: str) -> int:
    """A whole positive number from an integer or a quantity string ('64Ki')."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = ceil(parse_quantity(value))
        except QuantityError:
            raise TuningError(f"{knob} must be a whole number or a quantity like '64Ki'") from None
    else:
        raise TuningError(f"{knob} must be a whole number or a quantity like '64Ki'")
    if number < 0:
        raise TuningError(f"{knob} must not be negative")
    return number


def read_bool(value, knob: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TuningError(f"{knob} must be true or false")


def read_mode(value, knob: str) -> str:
    if isinstance(value, str) and value in P.MODES:
        return value
    raise TuningError(f"{knob} must be one of {', '.join(P.MODES)}")


def read_auto_count(value, knob: str) -> int | None:
    return None if value in (None, "auto") else read_count(value, knob)


# Config key -> (Tuning field, reader); the same table serves the annotations.
TUNING_KNOBS = {
    "width": ("width", read_count),
    "depth": ("depth", read_count),
    "threshold": ("threshold_bytes", read_auto_count),
    "window": ("window_ns", read_duration),
    "maxBurstTime": ("max_burst_time_ns", read_duration),
    "reserve": ("reserve_bits", read_auto_count),
    "ecn": ("ecn", read_bool),
    "flowTable": ("flow_table", read_auto_count),
    "mode": ("mode", read_mode),
    "classes": ("classes", read_count),
    "queue": ("queue_ns", read_duration),
    "sketchLock": ("sketch_lock", read_bool),
}
# Pod annotation -> config key.
ANNOTATION_KEYS = {
    "natra.io/width": "width",
    "natra.io/depth": "depth",
    "natra.io/threshold": "threshold",
    "natra.io/window": "window",
    "natra.io/max-burst-time": "maxBurstTime",
    "natra.io/reserve": "reserve",
    "natra.io/ecn": "ecn",
    "natra.io/flow-table": "flowTable",
    "natra.io/mode": "mode",
    "natra.io/classes": "classes",
    "natra.io/queue": "queue",
    "natra.io/sketch-lock": "sketchLock",
}
# Config key -> (Settings field, environment fallback).
LOCATION_KNOBS = {
    "bpffsRoot": ("bpffs_root", "NATRA_BPFFS_ROOT"),
    "objectPath": ("object_path", "NATRA_BPF_OBJECT"),
    "stateDir": ("state_dir", "NATRA_STATE_DIR"),
    "logFile": ("log_file", "NATRA_LOG_FILE"),
}
assert {f.name for f in fields(Tuning)} == {f for f, _ in TUNING_KNOBS.values()}
# Natra's own keys besides TUNING_KNOBS and LOCATION_KNOBS (a new knob goes in one of the three).
OTHER_KNOBS = ("attachMode", "logMaxBytes")
# Keys of a plugin entry that are not Natra's knobs: the CNI spec's and the runtime's, and the
# standard bandwidth plugin's static limits. Matched case-insensitively, as Go decodes them.
ENTRY_KEYS = ("cniVersion", "cniVersions", "name", "type", "args", "capabilities", "runtimeConfig",
              "prevResult", "ipMasq", "ipam", "dns", "cni.dev/valid-attachments", "cni.dev/attachments",
              "ingressRate", "ingressBurst", "egressRate", "egressBurst")


def natra_keys() -> tuple[str, ...]:
    return (*TUNING_KNOBS, *LOCATION_KNOBS, *OTHER_KNOBS)


def unknown_key(key) -> str | None:
    """Why `key` is not a key of Natra's conflist entry (the nearest valid key suggested), or None."""
    if key in natra_keys() or (isinstance(key, str) and key.casefold() in {k.casefold() for k in ENTRY_KEYS}):
        return None
    text = str(key)
    near = difflib.get_close_matches(text, natra_keys(), n=1, cutoff=0.6) or difflib.get_close_matches(
        text.casefold(), [k.casefold() for k in natra_keys()], n=1, cutoff=0.6)
    if near:
        near = [next(k for k in natra_keys() if k.casefold() == near[0].casefold())]
        return f"unknown key {text!r}: did you mean {near[0]!r}?"
    return f"unknown key {text!r} (Natra's keys: {', '.join(natra_keys())})"


def _apply(base: Tuning, values: Mapping, labels: Mapping[str, str] | None = None) -> Tuning:
    """`base` changed by {config key: value}; errors name the knob by its label."""
    changes = {}
    for key, value in values.items():
        name, reader = TUNING_KNOBS[key]
        changes[name] = reader(value, (labels or {}).get(key, key))
    return replace(base, **changes).validate()


def cluster_settings(config: Mapping, env: Mapping[str, str] | None = None) -> Settings:
    """The conflist entry's knobs; CniError(7) names the bad one."""
    env = env or {}
    try:
        for key in config:
            problem = unknown_key(key)
            if problem:
                raise TuningError(problem)
        tuning = _apply(Tuning(), {k: config[k] for k in TUNING_KNOBS if k in config})
        mode = config.get("attachMode", "auto")
        if mode not in ATTACH_MODES:
            raise TuningError(f"attachMode must be one of {', '.join(ATTACH_MODES)}")
        max_bytes = read_count(config.get("logMaxBytes", DEFAULT_LOG_MAX_BYTES), "logMaxBytes")
        locations = {}
        for key, (name, variable) in LOCATION_KNOBS.items():
            value = config.get(key, env.get(variable))
            if value is not None:
                if not isinstance(value, str):
                    raise TuningError(f"{key} must be a path string")
                locations[name] = value
    except TuningError as exc:
        raise CniError.of(Kind.INVALID_CONFIG, "invalid Natra setting in the plugin config",
                          str(exc)) from exc
    return Settings(tuning=tuning, attach_mode=mode, log_max_bytes=max_bytes, **locations)


def location_settings(config: Mapping, env: Mapping[str, str] | None = None) -> Settings:
    """Only the locations (pins, object, state, log) that are valid strings; never raises."""
    env = env or {}
    locations = {}
    for key, (name, variable) in LOCATION_KNOBS.items():
        value = config.get(key, env.get(variable))
        if isinstance(value, str):
            locations[name] = value
    return Settings(**locations)


def pod_tuning(base: Tuning, annotations: Mapping) -> tuple[Tuning, list[str]]:
    """`base` with the Pod's natra.io/ overrides, or `base` and a note when one is malformed."""
    ours = {k: v for k, v in annotations.items() if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX)}
    notes = [f"ignored unknown annotation {k}" for k in sorted(ours) if k not in ANNOTATION_KEYS]
    values = {ANNOTATION_KEYS[k]: v for k, v in ours.items() if k in ANNOTATION_KEYS}
    if not values:
        return base, notes
    labels = {knob: annotation for annotation, knob in ANNOTATION_KEYS.items()}
    try:
        return _apply(base, values, labels), notes
    except TuningError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(ours.items()) if k in ANNOTATION_KEYS)
        notes.append(f"malformed Natra annotation ({exc}; {shown}): Pod uses the cluster defaults")
        return base, notes
