"""What Natra is doing to each Pod on this node, as plain data.

Owns: turning what is pinned for one container (its meta record, the two
directions' config, state and per-CPU counters, the heavy-flow table) into a
`PodView`: counters split by class (mouse / heavy) and action (pass / drop /
mark), the limits applied, the bucket's fill level, and the heavy hitters
sorted by their sketch estimate. Also the rates between two snapshots, and
the JSON form that `natra status --json`, the exporter's `/api/pods` and the
web page all share.

Rule: decisions apart from effects. Everything above the line "reading the
pins" is pure: it takes `RawPod` records and `now` (ns, the clock of
`bpf_ktime_get_ns`, i.e. CLOCK_MONOTONIC) as arguments and touches no kernel,
clock or file. Only `read_pod` / `collect` below the line open pinned maps.
The last section only forwards the entry points natra/cli.py's registry
names here to natra.node.status_cli and natra.node.exporter (imported when called).

Must not know: how the program is loaded or attached, HTTP, terminals,
Prometheus; numpy/scapy/pyroute2 (the exporter imports this on every scrape).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass, field

from natra.kernel import layout as L
from natra.kernel.flowkey import format_key

# ---- the classification of a verdict -------------------------------------------------

CLASS_MOUSE = "mouse"
CLASS_HEAVY = "heavy"
CLASS_NONE = "unclassified"  # passed without a decision: direction not limited, or a missing map entry
ACTION_PASS = "pass"
ACTION_DROP = "drop"
ACTION_MARK = "mark"

# verdict -> (class, action); the verdict name keeps the finer reason.
VERDICT_CLASS_ACTION = {
    L.V_PASS_MOUSE: (CLASS_MOUSE, ACTION_PASS),
    L.V_PASS_HEAVY: (CLASS_HEAVY, ACTION_PASS),
    L.V_MARK: (CLASS_HEAVY, ACTION_MARK),
    L.V_DROP_MOUSE: (CLASS_MOUSE, ACTION_DROP),
    L.V_DROP_HEAVY: (CLASS_HEAVY, ACTION_DROP),
    L.V_DROP_SHARE: (CLASS_HEAVY, ACTION_DROP),
    L.V_PASS_UNLIMITED: (CLASS_NONE, ACTION_PASS),
    L.V_PASS_ERROR: (CLASS_NONE, ACTION_PASS),
}
CLASS_ACTIONS = tuple(dict.fromkeys(VERDICT_CLASS_ACTION.values()))  # stable order, no repeats

# Counters that are not verdict counters (frames, bytes, parse and flow-table events).
OTHER_COUNTERS = tuple(i for i in sorted(L.COUNTER_NAMES) if i >= L.C_VERDICT_BASE + 2 * L.NVERDICTS)

DEFAULT_TOP = 10  # heavy hitters listed per direction
# A live view keeps showing a heavy flow this long after its last heavy frame: a TCP
# flow held at its share can pause for a retransmission timeout (200 ms or more)
# and would otherwise blink in and out of the list between windows.
RECENT_NS = 1_000_000_000
DIRECTIONS = (L.DIR_TO_POD, L.DIR_FROM_POD)
MODE_POLICE, MODE_SHAPE = "police", "shape"  # natra.kernel.params.MODES
UNKNOWN = "unknown"  # meta fields a record does not carry
POD_NAME_FROM_ID = 12  # characters of the container ID that name a Pod without a meta record
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


# ---- what the edge reads -----------------------------------------------------------------

@dataclass(frozen=True)
class RawDirection:
    """One direction as pinned: struct natra_config / natra_state fields and counters."""

    config: dict  # natra_config fields (rate_bps, tau_nbit, heavy_line_nbit, ... flags)
    state: dict  # natra_state fields (heavy_now, heavy_prev, epoch, backlog_nbit, last_ns)
    counters: list[int]  # NCOUNTERS values summed over CPUs
    # Shaping mode: natra.kernel.shaping.inspect of this direction's device as a plain dict
    # ({"rate_bps", "burst_bytes", "classes": [ClassState fields...]}); None in police mode
    # or when the tree could not be read.
    shaper: dict | None = None


@dataclass(frozen=True)
class RawPod:
    """Everything pinned for one container, read once."""

    container_id: str
    meta: dict  # the meta record (natra/kernel/meta.py); {} when missing
    directions: dict[int, RawDirection]
    flows: dict[bytes, dict]  # natra_flows: 40-byte key -> natra_flow fields
    flow_table_size: int = 0  # max_entries of natra_flows (0: unknown)
    attached: tuple[int, ...] = DIRECTIONS  # directions with a program attached


# ---- what the tools show -------------------------------------------------------------------

@dataclass(frozen=True)
class Limit:
    """The limit applied to one direction, in the units users speak."""

    rate_bps: int  # bit/s
    burst_bytes: int  # the bucket depth B
    reserve_bytes: int  # the part of B only mice may spend
    threshold_bytes: int  # bytes per window that make a flow heavy
    window_ns: int
    ecn: bool


@dataclass(frozen=True)
class Traffic:
    """Packets and bytes of one (class, action) pair since the program was loaded."""

    klass: str
    action: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class HeavyHitter:
    """One entry of the heavy-flow table."""

    flow: str  # readable key: 'tcp 10.0.0.1:40000 > 10.0.0.2:80'
    key: str  # the 40-byte key in hex (stable identity across snapshots)
    estimate_bytes: int  # sketch estimate in the window of its last frame
    passed_bytes: int
    dropped_bytes: int
    marked_packets: int
    active: bool  # counted heavy in the current or the previous window
    idle_ns: int  # since its last heavy frame

    @property
    def recent(self) -> bool:
        """Heavy now, or was less than RECENT_NS ago (what live views list)."""
        return self.active or self.idle_ns < RECENT_NS


@dataclass(frozen=True)
class ShapeClass:
    """One HTB class of a shaped direction: what it sent, dropped and holds now."""

    name: str  # "root", "mice", "heavy0", ...
    sent_bytes: int
    sent_packets: int
    drops_packets: int  # by its leaf queue (full)
    backlog_bytes: int
    backlog_packets: int
    backlog_delay_ns: int  # how long the backlog takes to leave at the class's share
    share_bps: int  # bit/s the class may count on now


@dataclass(frozen=True)
class DirectionView:
    direction: str  # 'to_pod' | 'from_pod'
    limited: bool
    attached: bool
    limit: Limit | None
    traffic: tuple[Traffic, ...]
    verdicts: dict[str, dict[str, int]]  # verdict name -> {'packets', 'bytes'}
    counters: dict[str, int]  # frames, bytes, ipv4, ... (OTHER_COUNTERS)
    passed_bytes: int
    dropped_bytes: int
    marked_packets: int
    backlog_bytes: int  # bucket fill now (drained to `now`)
    heavy_active: int  # heavy flows counted in the current or previous window
    flow_entries: int  # entries of the heavy-flow table that belong to this direction
    heavy_hitters: tuple[HeavyHitter, ...]
    mode: str = MODE_POLICE  # "shape" (qdiscs queue) or "police" (the program drops)
    fallback: str | None = None  # why a direction meant to shape polices instead
    device: str = ""  # the shaped device: the host veth (to_pod) or the Pod's IFB (from_pod)
    classes: tuple[ShapeClass, ...] = ()  # shaping: the HTB classes, root first
    # shaping: False when the sketch steps without the lock (sketchLock false, CFG_UNLOCKED)
    sketch_lock: bool = True


@dataclass(frozen=True)
class NotLimited:
    """A Pod direction that asked for a limit and is NOT limited (the fail-open record)."""

    container_id: str
    namespace: str
    pod: str
    uid: str
    direction: str  # 'to_pod' | 'from_pod' | 'unknown' (a record of an older Natra)
    cause: str  # a label of natra.cni.failopen.CAUSES
    message: str  # the log line's cause
    since_ns: int  # wall clock (ns since the epoch) of the first failed-open ADD; 0: unknown
    updated_ns: int  # wall clock of the last one


@dataclass(frozen=True)
class PodView:
    container_id: str
    namespace: str
    pod: str
    uid: str
    interface: str
    attach_mode: str
    directions: tuple[DirectionView, ...] = field(default_factory=tuple)
    tcx_pending: bool = False  # on clsact filters until the node agent moves it to tcx links
    interim: bool = False  # on the shared interim program until the node agent swaps its own in
    flow_table_size: int = 0
    unassigned_flows: int = 0  # table entries whose direction could not be told

    def direction(self, name: str) -> DirectionView:
        return next(d for d in self.directions if d.direction == name)


# ---- pure helpers ------------------------------------------------------------------------------

def drained_backlog(backlog_nbit: int, last_ns: int, now: int, rate_bps: int) -> int:
    """The bucket's backlog at `now` (design.md `drain`, without changing anything)."""
    if now <= last_ns or rate_bps == 0:
        return backlog_nbit
    return max(0, backlog_nbit - (now - last_ns) * rate_bps)


def limit_of(config: dict) -> Limit | None:
    if not config.get("flags", 0) & L.CFG_ENABLED:
        return None
    tau = config["tau_nbit"]
    return Limit(
        rate_bps=config["rate_bps"],
        burst_bytes=tau // L.NBIT_PER_BYTE,
        reserve_bytes=(tau - config["heavy_line_nbit"]) // L.NBIT_PER_BYTE,
        threshold_bytes=config["threshold_bytes"],
        window_ns=config["window_ns"],
        ecn=bool(config["flags"] & L.CFG_ECN),
    )


def traffic_of(counters: list[int]) -> tuple[Traffic, ...]:
    """Verdict counters folded into (class, action) pairs."""
    sums = {pair: [0, 0] for pair in CLASS_ACTIONS}
    for verdict, pair in VERDICT_CLASS_ACTION.items():
        sums[pair][0] += counters[L.verdict_packets_index(verdict)]
        sums[pair][1] += counters[L.verdict_bytes_index(verdict)]
    return tuple(Traffic(k, a, p, b) for (k, a), (p, b) in sums.items())


def is_active(flow: dict, window_ns: int, now: int) -> bool:
    """Counted heavy in the window of `now` or the one before (design.md: ageing)."""
    epoch = now // window_ns if window_ns else 0
    return flow.get("counted_epoch", 0) >= epoch  # counted_epoch is window + 1


def heavy_census(state: dict, window_ns: int, now: int) -> int:
    """Distinct heavy flows of the current and previous window, as the program counts N."""
    if not window_ns:
        return 0
    epoch = now // window_ns
    st_epoch = state.get("epoch", 0)
    if st_epoch >= epoch:
        return max(state.get("heavy_now", 0), state.get("heavy_prev", 0))
    if st_epoch + 1 == epoch:
        return state.get("heavy_now", 0)
    return 0


def pod_addresses(meta: dict) -> frozenset[bytes]:
    """The Pod's addresses from its meta record, as 16-byte key addresses."""
    found = set()
    for text in meta.get("ips", []) or []:
        try:
            addr = ipaddress.ip_address(str(text).split("/")[0])
        except ValueError:
            continue
        found.add(V4_MAPPED + addr.packed if addr.version == 4 else addr.packed)
    return frozenset(found)


HOST_ROUTE_V4_MASK = "FFFFFFFF"  # /32 in /proc/net/route
HOST_ROUTE_V6_PREFIX = "80"  # /128 in /proc/net/ipv6_route


def routed_pod_ips(route_v4: str, route_v6: str, ifname: str) -> list[str]:
    """Host routes (/32, /128) through the Pod's host veth: the Pod's addresses.

    A ptp-style CNI routes each Pod address to its host veth; read from the text
    of /proc/net/route and /proc/net/ipv6_route (used when meta has no 'ips').
    """
    found = []
    for line in route_v4.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[0] == ifname and cols[7].upper() == HOST_ROUTE_V4_MASK:
            found.append(str(ipaddress.IPv4Address(bytes.fromhex(cols[1])[::-1])))
    for line in route_v6.splitlines():
        cols = line.split()
        if len(cols) >= 10 and cols[9] == ifname and cols[1] == HOST_ROUTE_V6_PREFIX:
            addr = ipaddress.IPv6Address(bytes.fromhex(cols[0]))
            if not addr.is_link_local and not addr.is_multicast:
                found.append(str(addr))
    return found


def flow_direction(key: bytes, pod_addrs: frozenset[bytes], limited: tuple[int, ...]) -> int | None:
    """Which direction a heavy-flow entry belongs to, or None if it cannot be told.

    The table is shared by both directions and the key does not say which one
    created it. Only a limited direction creates entries, so one limited
    direction decides it; with two, the Pod's address in the key does.
    """
    if len(limited) == 1:
        return limited[0]
    if key[16:32] in pod_addrs:
        return L.DIR_TO_POD
    if key[:16] in pod_addrs:
        return L.DIR_FROM_POD
    return None


def heavy_hitter(key: bytes, flow: dict, window_ns: int, now: int) -> HeavyHitter:
    return HeavyHitter(
        flow=format_key(key), key=key.hex(),
        estimate_bytes=flow.get("estimate_bytes", 0), passed_bytes=flow.get("passed_bytes", 0),
        dropped_bytes=flow.get("dropped_bytes", 0), marked_packets=flow.get("marked_packets", 0),
        active=is_active(flow, window_ns, now), idle_ns=max(0, now - flow.get("last_ns", 0)),
    )


def rank(hitters: list[HeavyHitter], top: int) -> tuple[HeavyHitter, ...]:
    """Active flows first, then by estimate, then by bytes offered; at most `top`."""
    ordered = sorted(hitters, key=lambda h: (not h.active, -h.estimate_bytes,
                                              -(h.passed_bytes + h.dropped_bytes), h.key))
    return tuple(ordered[:top])


def _meta_text(meta: dict, *names: str, default: str = UNKNOWN) -> str:
    for name in names:
        value = meta.get(name)
        if value not in (None, ""):
            return str(value)
    return default


def pod_identity(meta: dict, container_id: str) -> tuple[str, str]:
    """(namespace, name): the CNI plugin stores 'namespace/name' under 'pod' (from CNI_ARGS).

    A record without a Pod (an install by hand) is named by the container ID.
    """
    text = _meta_text(meta, "pod", default="")
    if "/" in text:
        namespace, name = text.split("/", 1)
    else:
        namespace, name = "", text
    namespace = namespace or _meta_text(meta, "pod_namespace", "namespace", default="")
    name = name or _meta_text(meta, "pod_name", "name", default="")
    return namespace, name or container_id[:POD_NAME_FROM_ID]


def shape_classes(shaper: dict | None) -> tuple[ShapeClass, ...]:
    """The classes of a shaper dict (natra.kernel.shaping.ShaperState as plain data), root first."""
    if not shaper:
        return ()
    out = []
    for c in shaper.get("classes", ()):
        share = int(c.get("share_bps", 0))
        backlog = int(c.get("backlog_bytes", 0))
        delay = c.get("backlog_delay_ns")
        if delay is None:
            delay = backlog * 8 * L.NS_PER_SEC // share if share else 0
        out.append(ShapeClass(str(c.get("name", "")), int(c.get("sent_bytes", 0)),
                              int(c.get("sent_packets", 0)), int(c.get("drops_packets", 0)), backlog,
                              int(c.get("backlog_packets", 0)), int(delay), share))
    return tuple(out)


def direction_mode(meta: dict, name: str) -> tuple[str, str | None, str]:
    """(mode, fallback reason or None, shaped device) of one direction from the meta record.

    Absent keys mean police mode (records written before shaping existed).
    """
    modes = meta.get("direction_modes")
    mode = modes.get(name) if isinstance(modes, dict) else None
    fallbacks = meta.get("shape_fallback")
    reason = fallbacks.get(name) if isinstance(fallbacks, dict) else None
    shaping = meta.get("shaping")
    where = shaping.get(name) if isinstance(shaping, dict) else None
    device = ""
    if isinstance(where, dict):
        device = str(where.get("ifb") or meta.get("host_ifname") or where.get("ifindex", ""))
    if mode not in (MODE_POLICE, MODE_SHAPE):
        mode = MODE_SHAPE if isinstance(where, dict) and reason is None else MODE_POLICE
    return mode, (str(reason) if reason is not None else None), device if mode == MODE_SHAPE else ""


def not_limited(records, views: list[PodView] | None = None) -> list[NotLimited]:
    """Fail-open records (natra.cni.failopen.Record) as one entry per direction not limited.

    A record whose direction a Pod view shows limited and attached is stale (a later
    ADD limited it and the clear was lost) and is left out.
    """
    enforced = {(v.container_id, d.direction) for v in views or () for d in v.directions
                if d.limited and d.attached}
    out = []
    for r in records:
        namespace, name = pod_identity({"pod": r.pod}, r.container_id)
        for direction, why in sorted(r.directions.items()):
            if (r.container_id, direction) in enforced:
                continue
            out.append(NotLimited(r.container_id, namespace, name, r.pod_uid or UNKNOWN, direction,
                                  str(why.get("cause", UNKNOWN)), str(why.get("message", "")),
                                  r.since_ns, r.updated_ns))
    return sorted(out, key=lambda n: (n.namespace, n.pod, n.container_id, n.direction))


def program_now(config: dict, now: int, tick_now: int | None) -> int:
    """Now on the clock a direction's program stamps its state with: the tick clock
    (jiffies x tick, `tick_now`) where its config has a tick_ns, else CLOCK_MONOTONIC
    (`now`; the coarse clock is the same clock, a tick behind at most)."""
    return tick_now if config.get("tick_ns") and tick_now is not None else now


def build_view(raw: RawPod, now: int, top: int = DEFAULT_TOP, tick_now: int | None = None) -> PodView:
    """The PodView of one container at time `now` (ns, CLOCK_MONOTONIC), with `tick_now`
    (ns, the data path's tick clock) for directions that read that clock."""
    meta = raw.meta or {}
    limited = tuple(d for d in DIRECTIONS if d in raw.directions
                    and raw.directions[d].config.get("flags", 0) & L.CFG_ENABLED)
    addrs = pod_addresses(meta)
    per_dir: dict[int | None, list[tuple[bytes, dict]]] = {}
    for key, flow in raw.flows.items():
        per_dir.setdefault(flow_direction(key, addrs, limited), []).append((key, flow))
    views = []
    for d in DIRECTIONS:
        if d not in raw.directions:
            continue
        rd = raw.directions[d]
        cfg, counters = rd.config, rd.counters
        window = cfg.get("window_ns", 0)
        dnow = program_now(cfg, now, tick_now)
        hitters = [heavy_hitter(k, f, window, dnow) for k, f in per_dir.get(d, [])]
        traffic = traffic_of(counters)
        backlog = drained_backlog(rd.state.get("backlog_nbit", 0), rd.state.get("last_ns", 0), dnow,
                                  cfg.get("rate_bps", 0))
        mode, fallback, device = direction_mode(meta, L.DIRECTION_NAMES[d]) if d in limited \
            else (MODE_POLICE, None, "")
        views.append(DirectionView(
            direction=L.DIRECTION_NAMES[d],
            limited=d in limited,
            attached=d in raw.attached,
            limit=limit_of(cfg),
            traffic=traffic,
            verdicts={name: {"packets": counters[L.verdict_packets_index(v)],
                             "bytes": counters[L.verdict_bytes_index(v)]}
                      for v, name in L.VERDICT_NAMES.items()},
            counters={L.COUNTER_NAMES[i]: counters[i] for i in OTHER_COUNTERS},
            passed_bytes=sum(t.bytes for t in traffic if t.action != ACTION_DROP),
            dropped_bytes=sum(t.bytes for t in traffic if t.action == ACTION_DROP),
            marked_packets=sum(t.packets for t in traffic if t.action == ACTION_MARK),
            backlog_bytes=backlog // L.NBIT_PER_BYTE,
            heavy_active=heavy_census(rd.state, window, dnow) if d in limited else 0,
            flow_entries=len(hitters),
            heavy_hitters=rank(hitters, top),
            mode=mode, fallback=fallback, device=device,
            classes=shape_classes(rd.shaper) if mode == MODE_SHAPE else (),
            sketch_lock=not (mode == MODE_SHAPE and cfg.get("flags", 0) & L.CFG_UNLOCKED),
        ))
    namespace, pod = pod_identity(meta, raw.container_id)
    return PodView(
        container_id=raw.container_id,
        namespace=namespace,
        pod=pod,
        uid=_meta_text(meta, "pod_uid", "uid", "K8S_POD_UID"),
        interface=_meta_text(meta, "host_ifname", "interface", "ifname"),
        attach_mode=_meta_text(meta, "mode", "attach_mode"),
        tcx_pending=meta.get("tcx_pending") is True,
        interim=bool(meta.get("interim")),
        directions=tuple(views),
        flow_table_size=raw.flow_table_size,
        unassigned_flows=len(per_dir.get(None, [])),
    )


# ---- rates between two snapshots ----------------------------------------------------------------

@dataclass(frozen=True)
class DirectionRates:
    """Per-second rates of one direction between two snapshots."""

    passed_bps: float  # bit/s let through (pass + mark)
    dropped_bps: float  # bit/s dropped
    offered_bps: float  # passed + dropped
    mouse_bps: float  # bit/s of mice let through
    heavy_bps: float  # bit/s of heavy flows let through
    packets_per_s: float
    flows_bps: dict[str, float]  # heavy-hitter key (hex) -> bit/s offered (passed + dropped)
    classes_bps: dict[str, float] = field(default_factory=dict)  # shaping: class name -> bit/s sent
    class_drops_per_s: dict[str, float] = field(default_factory=dict)  # class name -> packets/s dropped


def _delta(after: int, before: int) -> int:
    """A counter's growth; a counter that went back (the Pod was recreated) restarts from 0."""
    return after - before if after >= before else after


def direction_rates(before: DirectionView | None, after: DirectionView, elapsed_ns: int) -> DirectionRates:
    secs = elapsed_ns / L.NS_PER_SEC if elapsed_ns > 0 else 0.0

    def per_s(a: int, b: int) -> float:
        return _delta(a, b) / secs if secs else 0.0

    def pick(view: DirectionView | None, action_pred, klass=None) -> tuple[int, int]:
        if view is None:
            return 0, 0
        items = [t for t in view.traffic if action_pred(t.action) and (klass is None or t.klass == klass)]
        return sum(t.bytes for t in items), sum(t.packets for t in items)

    passing = lambda a: a != ACTION_DROP
    dropping = lambda a: a == ACTION_DROP
    every = lambda a: True
    old_flows = {h.key: h for h in before.heavy_hitters} if before else {}
    flows = {}
    for h in after.heavy_hitters:
        old = old_flows.get(h.key)
        offered_now = h.passed_bytes + h.dropped_bytes
        offered_then = old.passed_bytes + old.dropped_bytes if old else offered_now
        flows[h.key] = 8 * per_s(offered_now, offered_then)
    old_classes = {c.name: c for c in before.classes} if before else {}
    classes_bps = {c.name: 8 * per_s(c.sent_bytes, old_classes[c.name].sent_bytes if c.name in old_classes
                                     else c.sent_bytes) for c in after.classes}
    class_drops = {c.name: per_s(c.drops_packets, old_classes[c.name].drops_packets if c.name in old_classes
                                 else c.drops_packets) for c in after.classes}
    passed = per_s(pick(after, passing)[0], pick(before, passing)[0])
    dropped = per_s(pick(after, dropping)[0], pick(before, dropping)[0])
    return DirectionRates(
        passed_bps=8 * passed,
        dropped_bps=8 * dropped,
        offered_bps=8 * (passed + dropped),
        mouse_bps=8 * per_s(pick(after, passing, CLASS_MOUSE)[0], pick(before, passing, CLASS_MOUSE)[0]),
        heavy_bps=8 * per_s(pick(after, passing, CLASS_HEAVY)[0], pick(before, passing, CLASS_HEAVY)[0]),
        packets_per_s=per_s(pick(after, every)[1], pick(before, every)[1]),
        flows_bps=flows,
        classes_bps=classes_bps,
        class_drops_per_s=class_drops,
    )


def rates(before: list[PodView], after: list[PodView],
          elapsed_ns: int) -> dict[tuple[str, str], DirectionRates]:
    """(container ID, direction) -> rates; a Pod new in `after` counts from zero."""
    old = {(p.container_id, d.direction): d for p in before for d in p.directions}
    return {(p.container_id, d.direction):
            direction_rates(old.get((p.container_id, d.direction)), d, elapsed_ns)
            for p in after for d in p.directions}


# ---- the shared JSON form ----------------------------------------------------------------------------

JSON_VERSION = 1


def to_json(views: list[PodView], now: int, not_limited: list[NotLimited] | None = None,
            wall_ns: int | None = None) -> dict:
    """The document of `natra status --json` and `/api/pods` (one schema for both).

    `not_limited` lists every Pod direction that asked for a limit and is NOT limited
    (fail-open), with its cause and since when (`since_ns`, wall clock; `wall_ns` is
    the wall clock of this document, so readers can tell how long).
    """
    return {"version": JSON_VERSION, "now_ns": now, "wall_ns": wall_ns or 0,
            "pods": [asdict(v) for v in sorted(views, key=lambda v: (v.namespace, v.pod, v.container_id))],
            "not_limited": [asdict(n) for n in not_limited or ()]}


# ====================================================================================================
# ---- reading the pins (the only effects in this module) ---------------------------------------------


def read_pod(container_id: str, root: str | None = None, qdiscs: dict | None = None) -> RawPod | None:
    """Read everything pinned for one container; None if its directory is gone.

    `qdiscs`: every device's qdiscs by ifindex (natra.kernel.qdisc.dump_all_qdiscs)
    when the caller reads many Pods; None: dump them for this Pod's shaped devices."""
    from natra.kernel import maps, pins  # local: tests of the pure part need no bpf(2)
    from natra.kernel import meta as meta_record

    pd = pins.pin_dir(container_id, root)
    if not pd.exists():
        return None
    record = meta_record.read(pd.meta) or {}
    fds: dict[str, int] = {}
    try:
        for name in ("natra_config", "natra_state", "natra_counters", "natra_flows"):
            fds[name] = _obj_get(pd.map(name))
        try:
            fds["natra_flow_keys"] = _obj_get(pd.map("natra_flow_keys"))
        except FileNotFoundError:
            pass  # a Pod limited by a version before the array of flow slots: its table is not read
        directions = {
            d: RawDirection(config=maps.config_fields(fds["natra_config"], d),  # tick_ns included
                            state=_fields(maps.read_state(fds["natra_state"], d)),
                            counters=list(maps.read_counters(fds["natra_counters"], d)))
            for d in DIRECTIONS
        }
        flows = {bytes(k): _fields(v)
                 for k, v in maps.read_flows(fds["natra_flows"], fds["natra_flow_keys"]).items()} \
            if "natra_flow_keys" in fds else {}
        size = _max_entries(fds["natra_flows"])
    except FileNotFoundError:
        return None  # removed while we read it (DEL ran)
    finally:
        for fd in fds.values():
            os.close(fd)
    if "ips" not in record and record.get("host_ifname"):
        record = {**record, "ips": routed_pod_ips(_read_text("/proc/net/route"),
                                                  _read_text("/proc/net/ipv6_route"), record["host_ifname"])}
    attached = tuple(d for d in DIRECTIONS if d in record.get("directions", DIRECTIONS))
    shapers = read_shapers(record, qdiscs)
    if shapers:
        directions = {d: RawDirection(rd.config, rd.state, rd.counters, shapers.get(d))
                      for d, rd in directions.items()}
    return RawPod(container_id=container_id, meta=record, directions=directions, flows=flows,
                  flow_table_size=size, attached=attached)


def read_shapers(record: dict, qdiscs: dict | None = None) -> dict[int, dict]:
    """direction -> the qdisc tree of a shaped direction as a plain dict (none in police mode)."""
    shaping = record.get("shaping")
    if not isinstance(shaping, dict):
        return {}
    found = {}
    for d in DIRECTIONS:
        where = shaping.get(L.DIRECTION_NAMES[d])
        ifindex = where.get("ifindex") if isinstance(where, dict) else None
        if not isinstance(ifindex, int) or isinstance(ifindex, bool) or ifindex <= 0:
            continue
        state = _inspect_shaper(ifindex, None if qdiscs is None else qdiscs.get(ifindex, []))
        if state is not None:
            found[d] = state
    return found


def _inspect_shaper(ifindex: int, qdiscs: list | None) -> dict | None:
    try:
        from natra.kernel import shaping  # local: police-only nodes and the pure part never need it

        state = shaping.inspect(ifindex, qdiscs)
    except Exception:  # noqa: BLE001 - a device gone or a tree half-made: show the counters we have
        return None
    if state is None:
        return None
    return {"rate_bps": state.rate_bps, "burst_bytes": state.burst_bytes,
            "classes": [{**asdict(c), "backlog_delay_ns": c.backlog_delay_ns} for c in state.classes]}


DEFAULT_STATE_DIR = "/run/natra/cni"  # natra.cni.tuning.DEFAULT_STATE_DIR: where fail-open records live
STATE_DIR_ENV = "NATRA_STATE_DIR"


def state_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


def collect_not_limited(state: str | None = None, views: list[PodView] | None = None) -> list[NotLimited]:
    """Every Pod direction on this node that asked for a limit and is not limited."""
    from natra.cni import failopen  # pure file reading, no kernel

    return not_limited(failopen.read_all(state_dir(state)), views)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _obj_get(path: str) -> int:
    from natra.kernel import bpfsys

    try:
        return bpfsys.obj_get(path)
    except OSError as e:
        if e.errno == 2:
            raise FileNotFoundError(2, f"no pin at {path}") from e
        raise


def _max_entries(fd: int) -> int:
    from natra.kernel import bpfsys

    try:
        return bpfsys.map_info(fd)["max_entries"]
    except OSError:
        return 0


def _fields(value) -> dict:
    """A ctypes struct, dataclass or dict as a plain dict of its fields."""
    if isinstance(value, dict):
        return dict(value)
    if hasattr(value, "_fields_"):
        return {name: getattr(value, name) for name, *_ in value._fields_ if name not in ("lock", "pad")}
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot read fields of {type(value).__name__}")


def _all_qdiscs() -> dict | None:
    """Every device's qdiscs in one dump (a dump per Pod would carry all of them each
    time: quadratic in the Pods of the node); None when it fails (each Pod then tries)."""
    try:
        from natra.kernel import qdisc

        return qdisc.dump_all_qdiscs()
    except Exception:  # noqa: BLE001 - netlink refused: read_pod dumps per device
        return None


def collect(root: str | None = None, now: int | None = None, top: int = DEFAULT_TOP,
            tick_now: int | None = None) -> list[PodView]:
    """A PodView for every container with a pin directory under `root`, at `now`
    (CLOCK_MONOTONIC) and `tick_now` (the tick clock; both read here when not given)."""
    import time

    from natra.kernel import pins, ticks

    containers = pins.list_containers(root)
    qdiscs = _all_qdiscs() if containers else None
    raws = [r for r in (read_pod(cid, root, qdiscs) for cid in containers) if r is not None]
    stamp = time.monotonic_ns() if now is None else now
    tick_stamp = ticks.tick_clock_ns() if tick_now is None else tick_now
    return [build_view(r, stamp, top, tick_stamp) for r in raws]
