"""Decide what one CNI call should do, without doing any of it.

Owns: Request -> Plan. For ADD and CHECK: which directions to limit, the exact
`ConfigValues` and `DataPathParams` of each (and, for a shaped direction, the
policing parameters it falls back to when its qdiscs cannot be built), the
attach mode, the host-side veth candidates taken
from prevResult, and the metadata stored with the state; or a no-op plan when
the Pod has no limits. For GC: the attachments to keep. Also `drift`, which
compares a plan with the state read back from the kernel, and `configs_in_force`,
the configs the kernel should hold once the executor knows which directions
really shape and through which IFB.
Rule: pure (no kernel, files, clock or environment reads); protocol problems
raise CniError, anything that only makes limiting impossible becomes
`Plan.cause` and the executor fails open on it.
Must not know: how the data path attaches, pins or reads state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from natra.cni import versions
from natra.cni.errors import CniError, Kind
from natra.cni.limits import Limits, extract_limits, pod_annotations
from natra.cni.request import Request
from natra.cni.tuning import Settings, Tuning, cluster_settings, location_settings, pod_tuning
from natra.kernel import layout as L
from natra.kernel import params as P

VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
# The text each plan cause starts with; `cause_kind` names it for the fail-open record.
CAUSE_UNREPRESENTABLE = "limits cannot be represented"
CAUSE_NO_HOST = "prevResult lists no host-side interface"
CAUSE_KINDS = {CAUSE_UNREPRESENTABLE: "unrepresentable_limits", CAUSE_NO_HOST: "no_host_interface"}


@dataclass(frozen=True)
class Attachment:
    """The kernel state a limited Pod should have."""

    container_id: str
    pod_ifname: str  # CNI_IFNAME inside the Pod
    netns: str  # path of the Pod's network namespace
    host_candidates: tuple[str, ...]  # host-side interfaces from prevResult, likeliest first
    directions: frozenset[int]  # limited directions (L.DIR_TO_POD, L.DIR_FROM_POD)
    configs: tuple[P.ConfigValues, ...]  # one per direction index, unlimited ones too
    mode: str  # "auto", "tcx" or "clsact"
    flow_table: int  # heavy-flow entries
    meta: Mapping = field(default_factory=dict)  # stored with the state, read back by CHECK
    # Per direction index (None: not limited): the parameters in the Pod's mode, and for a
    # shaped direction the policing parameters it falls back to when its tree cannot be built.
    params: tuple[P.DataPathParams | None, ...] = (None, None)
    fallback: tuple[P.DataPathParams | None, ...] = (None, None)
    clock_tick_ns: int = 0  # the node's timer tick: policed directions may read a tick-grained clock

    def shaped(self) -> dict[int, P.DataPathParams]:
        """Directions the plan shapes, with their (shaping) parameters."""
        return {d: p for d, p in enumerate(self.params)
                if p is not None and d in self.directions and p.mode == P.MODE_SHAPE}

    def fallback_config(self, direction: int) -> P.ConfigValues:
        """The policing config of a shaped direction whose qdiscs could not be built."""
        params = self.fallback[direction]
        if params is None:
            raise ValueError(f"direction {direction} has no policing fallback")
        return P.to_config(params, width=params.width, depth=params.depth, coarse_tick_ns=self.clock_tick_ns)


@dataclass(frozen=True)
class Plan:
    command: str
    cni_version: str
    settings: Settings
    result: dict | None = None  # ADD: what to print (prevResult in the request's version)
    attachment: Attachment | None = None  # ADD/CHECK: None when there is nothing to limit
    cause: str | None = None  # ADD/CHECK: why limiting is impossible (fail open)
    cause_kind: str = ""  # the cause's label (natra.cni.failopen.CAUSES) when `cause` is set
    asked: tuple[str, ...] = ()  # ADD/CHECK: directions the Pod asked to limit, refused ones too
    refused: tuple[tuple[str, str], ...] = ()  # (direction, why) asked but void (bad annotation)
    notes: tuple[str, ...] = ()  # log lines: things ignored on the way
    keep: frozenset[tuple[str, str]] = frozenset()  # GC: (containerID, ifname) still valid
    container_id: str = ""
    pod: str = ""  # namespace/name, for logs


def host_candidates(prev_result: Mapping | None, pod_ifname: str) -> tuple[str, ...]:
    """Host-side interfaces of prevResult, the one listed just before the Pod's first.

    ptp lists [host veth, eth0]; bridge lists [bridge, host veth, eth0]. The
    executor keeps only the candidate that is really the peer of the Pod's end.
    """
    interfaces = (prev_result or {}).get("interfaces")
    if not isinstance(interfaces, list):
        return ()
    named = [(i, x.get("name"), bool(x.get("sandbox"))) for i, x in enumerate(interfaces)
             if isinstance(x, dict) and isinstance(x.get("name"), str) and x.get("name")]
    pod_index = next((i for i, name, in_pod in named if in_pod and name == pod_ifname), None)
    host = [(i, name) for i, name, in_pod in named if not in_pod]
    if pod_index is not None:
        host.sort(key=lambda item: (item[0] != pod_index - 1, item[0]))
    return tuple(name for _, name in host)


def direction_params(rate_bps: int, burst_bits: int | None, tuning: Tuning, overrides: Mapping,
                     mode: str) -> P.DataPathParams:
    """One direction's parameters in `mode`: the one code path for the Pod's mode and for the
    policing fallback of a shaped direction (so the policing floor applies to both alike)."""
    kwargs = tuning.params_kwargs()
    kwargs.update(overrides)  # the extended annotation form, per direction
    kwargs["mode"] = mode
    params = P.params_for(rate_bps, burst_bits or None, **kwargs)
    # The sketch is shared: its shape comes from the Pod's tuning, not a direction.
    return params.with_(width=tuning.width, depth=tuning.depth)


def floor_note(name: str, asked_bits: int | None, params: P.DataPathParams) -> str | None:
    """The log line when the policing floor raised an asked burst, else None."""
    if not P.burst_floor_raised(asked_bits, params.burst_bits):
        return None
    return (f"{name} burst {asked_bits} bits is below the policing floor; "
            f"applied {params.burst_bits} bits (a drop policer must hold whole "
            f"64 KiB GSO packets): at most R*t + {params.burst_bits} bits pass")


def _configs(limits: Limits, request: Request, settings: Settings, notes: list[str], clock_tick_ns: int):
    annotations = pod_annotations(request.config)
    tuning, tuning_notes = pod_tuning(settings.tuning, annotations)
    notes.extend(tuning_notes)
    configs, described, params_of, fallback_of = [], {}, [], []
    for direction in range(L.NDIRS):
        limit = limits.directions.get(direction)
        if limit is None:
            configs.append(P.to_config(None, width=tuning.width, depth=tuning.depth))
            params_of.append(None)
            fallback_of.append(None)
            continue
        name = L.DIRECTION_NAMES[direction]
        # Valid input is never dropped: a rate above what the data path counts
        # (1 Pbit/s, beyond any NIC) is enforced at that bound, and said so.
        rate = min(limit.rate_bps, L.MAX_RATE_BPS)
        if rate != limit.rate_bps:
            notes.append(f"{name} rate {limit.rate_bps} bit/s is above {L.MAX_RATE_BPS} bit/s; "
                         f"limited to {rate} bit/s")
        params = direction_params(rate, limit.burst_bits, tuning, limit.overrides, tuning.mode)
        note = floor_note(name, limit.burst_bits, params)
        if note:
            notes.append(note)
        fallback = (direction_params(rate, limit.burst_bits, tuning, limit.overrides, P.MODE_POLICE)
                    if params.mode == P.MODE_SHAPE else None)
        configs.append(P.to_config(params, width=tuning.width, depth=tuning.depth,
                                   coarse_tick_ns=clock_tick_ns))
        params_of.append(params)
        fallback_of.append(fallback)
        described[name] = {
            "rate_bps": rate, "burst_bits": params.burst_bits, "mode": params.mode,
            "asked_burst_bits": limit.burst_bits, "source": limit.source}
        if fallback is not None:
            described[name]["fallback_burst_bits"] = fallback.burst_bits  # if it must police
        if rate != limit.rate_bps:
            described[name]["asked_rate_bps"] = limit.rate_bps
    return tuple(configs), described, tuning, tuple(params_of), tuple(fallback_of)


def _sketch_shape(limits: Limits) -> dict:
    """width/depth asked by an extended annotation; ingress wins over egress."""
    shape = {}
    for direction in (L.DIR_FROM_POD, L.DIR_TO_POD):
        limit = limits.directions.get(direction)
        if limit:
            shape.update({k: v for k, v in limit.overrides.items() if k in ("width", "depth")})
    return shape


def _pod_ips(prev_result) -> list[str]:
    """The Pod's addresses from prevResult (observability tells directions apart by them)."""
    if not isinstance(prev_result, Mapping):
        return []
    ips = prev_result.get("ips")
    if not isinstance(ips, list):
        return []
    return [ip["address"] for ip in ips
            if isinstance(ip, Mapping) and isinstance(ip.get("address"), str)]


def _limit_plan(request: Request, settings: Settings,
                clock_tick_ns: int) -> tuple[Attachment | None, str | None, list[str]]:
    limits = extract_limits(request.config)
    notes = list(request.warnings) + list(limits.notes)
    if not limits:
        return None, None, notes
    try:
        shape = _sketch_shape(limits)
        if shape:
            settings = replace(settings, tuning=replace(settings.tuning, **shape).validate())
        configs, described, tuning, params, fallback = _configs(limits, request, settings, notes,
                                                                clock_tick_ns)
    except (P.ParamError, ValueError) as exc:
        return None, f"{CAUSE_UNREPRESENTABLE}: {exc}", notes
    candidates = host_candidates(request.prev_result, request.ifname)
    meta = {"pod": request.pod, "pod_uid": request.args.get("K8S_POD_UID", ""),
            "ifname": request.ifname, "limits": described, "ips": _pod_ips(request.prev_result),
            "tuning": {"width": tuning.width, "depth": tuning.depth,
                       "window_ns": tuning.window_ns or next(p.window_ns for p in params if p),
                       "mode": tuning.mode, "classes": tuning.classes, "queue_ns": tuning.queue_ns}}
    attachment = Attachment(
        container_id=request.container_id, pod_ifname=request.ifname, netns=request.netns,
        host_candidates=candidates, directions=frozenset(limits.directions), configs=configs,
        params=params, fallback=fallback, clock_tick_ns=clock_tick_ns,
        mode=settings.attach_mode, flow_table=P.flow_slots(tuning.flow_table) or P.flow_table_entries(
            [fb or p for p, fb in zip(params, fallback, strict=True)]),
        meta=meta)
    cause = None if candidates or request.command != "ADD" else \
        f"{CAUSE_NO_HOST} for {request.ifname}"
    return attachment, cause, notes


def _keep(config: Mapping) -> frozenset[tuple[str, str]]:
    for key in VALID_ATTACHMENTS_KEYS:
        entries = config.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise CniError.of(Kind.INVALID_CONFIG, f"{key} must be a list of objects",
                              'each entry is {"containerID": .., "ifname": ..}')
        return frozenset((str(e.get("containerID", "")), str(e.get("ifname", ""))) for e in entries)
    return frozenset()


def make_plan(request: Request, env: Mapping[str, str] | None = None, *, clock_tick_ns: int = 0) -> Plan:
    """What `request` should do. `env` only supplies location fallbacks (NATRA_*);
    `clock_tick_ns`, the node's timer tick, lets policed directions read a tick-grained clock
    (0: the fine one)."""
    notes = list(request.warnings)
    try:
        settings = cluster_settings(request.config, env)
    except CniError as err:
        if request.command != "DEL":
            raise
        # DEL must succeed: clean up where the locations say, whatever else is wrong.
        settings = location_settings(request.config, env)
        notes.append(f"DEL despite an invalid config ({err}); using its locations only")
    base = {"command": request.command, "cni_version": request.cni_version, "settings": settings,
            "container_id": request.container_id, "pod": request.pod}
    if request.command in ("ADD", "CHECK"):
        attachment, cause, notes = _limit_plan(request, settings, clock_tick_ns)
        limits = extract_limits(request.config)
        asked = sorted({*limits.directions, *limits.refused})
        extra = {"asked": tuple(L.DIRECTION_NAMES[d] for d in asked),
                 "refused": tuple((L.DIRECTION_NAMES[d], why) for d, why in sorted(limits.refused.items())),
                 "cause_kind": next((k for t, k in CAUSE_KINDS.items() if cause and cause.startswith(t)),
                                    "")}
        prev = request.prev_result
        if request.command == "ADD" and (attachment or cause) and prev is None:
            raise CniError.of(Kind.INVALID_CONFIG, "must be called as chained plugin",
                              "the Pod has bandwidth limits but the config has no prevResult; "
                              "list natra after the main network plugin in the conflist")
        result = versions.convert_result(prev, request.cni_version) if request.command == "ADD" else None
        return Plan(**base, result=result, attachment=attachment, cause=cause, notes=tuple(notes), **extra)
    if request.command == "GC":
        return Plan(**base, keep=_keep(request.config), notes=tuple(notes))
    return Plan(**base, notes=tuple(notes))


def keeps(plan: Plan, container_id: str, ifname: str | None) -> bool:
    """GC: is this installed container still valid? Matched on containerID and ifname when known."""
    return any(cid == container_id and (not ifname or not name or name == ifname) for cid, name in plan.keep)


def configs_in_force(attachment: Attachment, modes: Mapping[int, str],
                     redirects: Mapping[int, int]) -> tuple[P.ConfigValues, ...]:
    """The configs the kernel should hold: the plan's, except that a shaped direction that
    fell back to policing (`modes[d] == "police"`) holds its fallback config, and a shaped
    direction redirected to a device (`redirects[d]`, the IFB out of the Pod) names it."""
    configs = list(attachment.configs)
    for direction in attachment.shaped():
        if modes.get(direction, P.MODE_SHAPE) == P.MODE_POLICE:
            configs[direction] = attachment.fallback_config(direction)
        elif redirects.get(direction):
            configs[direction] = replace(configs[direction], redirect_ifindex=redirects[direction])
    return tuple(configs)


def drift(attachment: Attachment, mode: str | None, attached: Sequence[int],
          configs: Mapping[int, P.ConfigValues], wanted: Sequence[P.ConfigValues] | None = None) -> list[str]:
    """How the kernel state (read back) differs from the plan (or from `wanted`, the configs
    in force: configs_in_force); [] when it matches."""
    wanted_configs = attachment.configs if wanted is None else wanted
    problems = []
    for direction in range(L.NDIRS):
        name = L.DIRECTION_NAMES[direction]
        wanted = direction in attachment.directions
        if wanted and direction not in attached:
            problems.append(f"{name} program is not attached")
        elif not wanted and direction in attached:
            problems.append(f"{name} program is attached but {name} has no limit")
        if wanted and direction in configs:
            have, want = configs[direction], wanted_configs[direction]
            if have.as_tuple() != want.as_tuple():
                diffs = [f"{f}={getattr(have, f)} (want {getattr(want, f)})"
                         for f in P.ConfigValues.__dataclass_fields__ if getattr(have, f) != getattr(want, f)]
                problems.append(f"{name} config differs: {', '.join(diffs)}")
        elif wanted:
            problems.append(f"{name} config missing")
    if attachment.mode != "auto" and mode and mode != attachment.mode:
        problems.append(f"attached with {mode}, config asks for {attachment.mode}")
    return problems
