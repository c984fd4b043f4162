"""A Pod's bandwidth limits, read from wherever a runtime or an operator put them.

Owns: where limits come from and which source wins, per direction:
  1. the four keys at the top level of the plugin config (static limits; if any
     of them is present they alone apply, as in the standard plugin),
  2. `runtimeConfig.bandwidth` (the `bandwidth` capability; containerd sends
     PascalCase, CRI-O camelCase, upstream tests `bandWidth`),
  3. the Pod's `kubernetes.io/{ingress,egress}-bandwidth` annotation from the
     `io.kubernetes.cri.pod-annotations` capability, as a plain quantity or in
     Natra's extended JSON form `{"rate": .., "burst": .., "cms": {..}}`.
Keys are matched as Go's encoding/json matches them: exact first, then
case-insensitively. Ingress (into the Pod) is direction DIR_TO_POD, egress
DIR_FROM_POD.
Rule: a half-specified config limit is an invalid config (code 7, upstream's
message); a bad annotation is only a note: no limit comes from it (fail open).
Notes never quote annotation values.
Must not know: the data path's defaults (burst clamp, reserve), the kernel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from natra.cni.errors import CniError, Kind
from natra.cni.quantity import QuantityError, parse_bandwidth, parse_quantity
from natra.kernel import layout as L

POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
BANDWIDTH_KEY = "bandwidth"
# Direction -> (rate key, burst key, annotation) as the standard plugin names them.
DIRECTION_KEYS = {
    L.DIR_TO_POD: ("ingressRate", "ingressBurst", "kubernetes.io/ingress-bandwidth"),
    L.DIR_FROM_POD: ("egressRate", "egressBurst", "kubernetes.io/egress-bandwidth"),
}
# The standard plugin refuses bursts whose byte count does not fit in 32 bits.
MAX_UINT32 = 2**32 - 1
# The extended form's sketch overrides: JSON key -> Natra's parameter name.
CMS_KEYS = {"width": "width", "depth": "depth", "heavyHitterThreshold": "threshold_bytes"}
EXTENDED_KEYS = frozenset({"rate", "burst", "cms"})


@dataclass(frozen=True)
class DirectionLimit:
    """The limit of one direction as asked; Natra's defaults are applied later."""

    rate_bps: int  # bit/s
    burst_bits: int | None  # bits as asked; None when the source gave none
    source: str  # "config", "runtimeConfig" or the annotation key
    overrides: Mapping[str, int] = field(default_factory=dict)  # extended form's cms


@dataclass(frozen=True)
class Limits:
    directions: Mapping[int, DirectionLimit]  # only limited directions
    notes: tuple[str, ...] = ()  # fail-open causes met while reading (bad annotations)
    refused: Mapping[int, str] = field(default_factory=dict)  # direction -> why its asked limit is void

    def __bool__(self) -> bool:
        return bool(self.directions)


def lookup(mapping: Mapping, key: str):
    """mapping[key] the way Go's json decoder finds a field: exact, else case-insensitive."""
    if key in mapping:
        return mapping[key]
    folded = key.casefold()
    for candidate, value in mapping.items():
        if isinstance(candidate, str) and candidate.casefold() == folded:
            return value
    return None


def _has_any(mapping: Mapping, keys) -> bool:
    folded = {k.casefold() for k in keys}
    return any(isinstance(k, str) and k.casefold() in folded for k in mapping)


def _bits(value, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
        raise CniError.of(Kind.INVALID_CONFIG, "rate and burst must be a positive integer",
                          f"{where} is {value!r}")
    return int(value)


def _entry_limits(entry: Mapping, source: str) -> dict[int, DirectionLimit]:
    """Validate one bandwidth entry as upstream does and keep its limited directions."""
    found = {}
    for direction, (rate_key, burst_key, _) in DIRECTION_KEYS.items():
        rate = _bits(lookup(entry, rate_key), f"{source} {rate_key}")
        burst = _bits(lookup(entry, burst_key), f"{source} {burst_key}")
        problem = None
        if burst == 0 and rate != 0:
            problem = "if rate is set, burst must also be set"
        elif rate == 0 and burst != 0:
            problem = "if burst is set, rate must also be set"
        elif burst // 8 >= MAX_UINT32:
            problem = "burst cannot be more than 4GB"
        if problem:
            raise CniError.of(Kind.INVALID_CONFIG, problem,
                              f"{source}: {rate_key}={rate} bit/s, {burst_key}={burst} bits")
        if rate:
            found[direction] = DirectionLimit(rate, burst, source)
    return found


def _cms_overrides(cms) -> dict[str, int]:
    if not isinstance(cms, dict):
        raise ValueError("cms must be an object")
    overrides = {}
    for key, value in cms.items():
        if key not in CMS_KEYS:
            raise ValueError(f"unknown cms key {key!r} (known: {', '.join(CMS_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"cms {key} must be a positive integer")
        overrides[CMS_KEYS[key]] = value
    return overrides


def parse_annotation(text) -> tuple[int, int | None, dict[str, int]]:
    """(rate bit/s, burst bits or None, sketch overrides) from one bandwidth annotation."""
    if not isinstance(text, str):
        raise ValueError("value is not a string")
    if not text.lstrip().startswith("{"):
        return parse_bandwidth(text), None, {}
    try:
        form = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"extended form is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(form, dict) or "rate" not in form:
        raise ValueError("extended form needs a \"rate\"")
    unknown = set(form) - EXTENDED_KEYS
    if unknown:
        raise ValueError(f"extended form has unknown keys {sorted(unknown)}")
    rate = parse_bandwidth(form["rate"])
    burst = None
    if "burst" in form:
        burst = -(-parse_quantity(form["burst"]) // 1)  # bits, rounded up
        if burst <= 0:
            raise ValueError("burst must be positive")
        burst = int(burst)
    return rate, burst, _cms_overrides(form.get("cms", {}))


def _annotation_limits(annotations: Mapping, wanted
                       ) -> tuple[dict[int, DirectionLimit], list[str], dict[int, str]]:
    found, notes, refused = {}, [], {}
    for direction in wanted:
        key = DIRECTION_KEYS[direction][2]
        if key not in annotations:
            continue
        try:
            rate, burst, overrides = parse_annotation(annotations[key])
        except (ValueError, QuantityError) as exc:
            # The message of a quantity error may quote the value: keep only ours.
            reason = str(exc) if not isinstance(exc, QuantityError) or "unreasonably" in str(exc) \
                else "not a Kubernetes quantity"
            notes.append(f"ignored invalid {key} annotation: {reason}; no limit from it")
            refused[direction] = f"invalid {key} annotation: {reason}"
            continue
        found[direction] = DirectionLimit(rate, burst, key, overrides)
    return found, notes, refused


def pod_annotations(config: Mapping) -> Mapping:
    runtime = config.get("runtimeConfig")
    if not isinstance(runtime, dict):
        return {}
    annotations = runtime.get(POD_ANNOTATIONS_CAPABILITY)
    return annotations if isinstance(annotations, dict) else {}


def extract_limits(config: Mapping) -> Limits:
    """The limits of the Pod this config is for; CniError(7) for a half-specified entry."""
    static_keys = [k for keys in DIRECTION_KEYS.values() for k in keys[:2]]
    runtime = config.get("runtimeConfig")
    runtime = runtime if isinstance(runtime, dict) else {}
    entry = lookup(runtime, BANDWIDTH_KEY)
    runtime_limits = _entry_limits(entry, "runtimeConfig.bandwidth") if isinstance(entry, dict) else {}
    if _has_any(config, static_keys):
        return Limits(_entry_limits(config, "config"))
    missing = [d for d in DIRECTION_KEYS if d not in runtime_limits]
    from_annotations, notes, refused = _annotation_limits(pod_annotations(config), missing)
    return Limits({**runtime_limits, **from_annotations}, tuple(notes), refused)
