"""Seeded traffic workloads for the simulations: packet tables with ground truth.

Owns: the generators the sweeps feed to the reference model (web-search and
data-mining flow sizes with Poisson arrivals, Zipf popularity, elephants next
to mice, many-flows stress, an unresponsive UDP flood beside AIMD senders),
each as a `Workload`: per-packet numpy columns (now_ns, wire_len, flow_id,
ect) in time order, plus a `Flows` table (key, addresses, ports, role) per flow.
Rule: a generator is a pure function of its arguments and `seed` (numpy's
PCG64); the same call gives the same arrays, bit for bit. Time is an argument
(`duration_ns`), never read from a clock. Sizes count whole Ethernet frames
(what the data path charges), KB means 1000 bytes.
Open loop: apart from `flood_mix`, senders do not react to drops; each flow
sends its bytes in full frames paced at `send_bps` (a lone TCP flow would
settle at the bottleneck, the Pod's rate). `flood_mix` is closed loop: it asks
an injected `decide` function for the verdicts of each round trip.
Must not know: the sketch, the policy, verdict meanings beyond "dropped" and
"marked" (it takes those sets as arguments), files, metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from natra.simulations.progress import stage

from natra.kernel import layout as L

KEY_LEN = 40  # sizeof(struct natra_flow_key)
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
PACING_JITTER = 0.5  # each inter-frame gap varies by up to +-50 % (see packetize)
MTU_FRAME_BYTES = 1514  # a 1500-byte IP packet in an Ethernet frame
GSO_FRAME_BYTES = 65536 - 2  # one GRO/GSO super-packet as the host veth sees it
# The smallest frame a workload emits: Ethernet + IPv6 + TCP headers, so that
# every packet can be written to pcap with its full headers (IPv4 or IPv6).
MIN_FRAME_BYTES = ETH_HLEN + 40 + 20
KB = 1000

# Flow-size CDFs as published: (size in bytes, cumulative probability). The
# generators add (0 bytes, 0.0) in front and interpolate linearly in size
# within each segment; a flow is never smaller than one minimal frame.
WEB_SEARCH_CDF = ((10 * KB, 0.15), (80 * KB, 0.53), (1000 * KB, 0.70), (10_000 * KB, 0.97),
                  (30_000 * KB, 1.00))
DATA_MINING_CDF = ((1_100, 0.55), (10 * KB, 0.80), (400 * KB, 0.90), (1_850 * KB, 0.95),
                   (1_000_000 * KB, 1.00))
SIZE_CDFS = {"websearch": WEB_SEARCH_CDF, "datamining": DATA_MINING_CDF}

DEFAULT_RATE_BPS = 1_000_000_000  # the Pod's limit the loads refer to
DEFAULT_DURATION_NS = 10 * L.NS_PER_SEC
DEFAULT_LOAD = 0.6  # offered bytes / (rate * duration)

# Roles of a flow in its workload (Flows.role): what the generator meant it to
# be. Metrics never use roles as ground truth; they count bytes per window.
ROLE_BACKGROUND = 0  # drawn from a size distribution or a popularity law
ROLE_ELEPHANT = 1
ROLE_MOUSE = 2
ROLE_FLOOD = 3  # unresponsive UDP
ROLE_AIMD = 4  # TCP-like sender reacting to drops and CE marks
ROLE_NAMES = {ROLE_BACKGROUND: "background", ROLE_ELEPHANT: "elephant", ROLE_MOUSE: "mouse",
              ROLE_FLOOD: "flood", ROLE_AIMD: "aimd"}

POD_V4 = bytes([10, 244, 1, 10])
POD_V6 = bytes.fromhex("fd000244000100000000000000000a0a")
REMOTE_V6_PREFIX = bytes.fromhex("fd000001000000000000")  # /80; flow index in the low 48 bits
V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
REMOTE_V4_FIRST_OCTET = 10  # remote peers are 10.x.y.z with x.y.z = flow index + 1
MAX_V4_PEERS = (1 << 24) - 2
SERVICE_PORTS = (80, 443, 8080, 9000)
EPHEMERAL_PORTS = (32768, 60999)  # Linux ip_local_port_range


@dataclass(frozen=True)
class Flows:
    """Ground truth per flow; row i is flow_id i."""

    keys: np.ndarray  # (F, 40) uint8, struct natra_flow_key
    role: np.ndarray  # int8 ROLE_*
    ipv6: np.ndarray  # bool
    proto: np.ndarray  # uint8 IPPROTO_*
    saddr: np.ndarray  # (F, 16) uint8, IPv4-mapped for IPv4
    daddr: np.ndarray  # (F, 16) uint8
    sport: np.ndarray  # uint16, host order
    dport: np.ndarray  # uint16, host order
    ect: np.ndarray  # bool: the sender sets ECT(0)

    def __len__(self) -> int:
        return int(self.role.shape[0])


@dataclass(frozen=True)
class Workload:
    """A packet table in time order plus its flows; all one direction (to the Pod)."""

    name: str
    seed: int
    rate_bps: int  # the Pod limit the generator's loads refer to
    duration_ns: int
    now_ns: np.ndarray  # uint64[n], non-decreasing
    wire_len: np.ndarray  # uint32[n], whole frame bytes
    flow_id: np.ndarray  # int32[n], row of `flows`
    ect: np.ndarray  # bool[n]
    flows: Flows
    settings: dict = field(default_factory=dict)  # the generator's arguments, for reports
    verdicts: np.ndarray | None = None  # closed-loop workloads carry what the data path decided

    def __len__(self) -> int:
        return int(self.now_ns.shape[0])

    @property
    def keys(self) -> np.ndarray:
        """(n, 40) uint8 flow keys of every packet (materialised on each call)."""
        return self.flows.keys[self.flow_id]

    @property
    def direction(self) -> np.ndarray:
        return np.full(len(self), L.DIR_TO_POD, dtype=np.uint8)

    def chunks(self, size: int) -> Iterator[slice]:
        """Consecutive packet ranges of at most `size` packets, in time order."""
        for start in range(0, len(self), size):
            yield slice(start, min(start + size, len(self)))


# ---- flow identities ---------------------------------------------------------

def flow_keys(saddr: np.ndarray, daddr: np.ndarray, sport: np.ndarray, dport: np.ndarray,
              proto: np.ndarray, ipv6: np.ndarray) -> np.ndarray:
    """struct natra_flow_key of each flow, (F, 40) uint8, as parse_frame builds it."""
    n = saddr.shape[0]
    keys = np.zeros((n, KEY_LEN), dtype=np.uint8)
    keys[:, 0:16] = saddr
    keys[:, 16:32] = daddr
    keys[:, 32:34] = _be16(sport)
    keys[:, 34:36] = _be16(dport)
    ethertype = np.where(ipv6, ETH_P_IPV6, ETH_P_IP).astype(np.uint16)
    keys[:, 36:38] = _be16(ethertype)
    keys[:, 38] = proto
    keys[:, 39] = np.where(ipv6, L.KEY_IPV6, 0)
    return keys


def _be16(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=">u2").reshape(-1, 1).view(np.uint8)


def make_flows(rng: np.random.Generator, role: np.ndarray, *, ipv6_fraction: float = 0.0,
               proto: np.ndarray | int = IPPROTO_TCP, ect: np.ndarray | bool = False) -> Flows:
    """Distinct identities for len(role) flows from remote peers to the Pod.

    Peer addresses are derived from the flow index (so no two flows share a
    5-tuple); ports are drawn, so keys still spread over the hash.
    """
    n = int(role.shape[0])
    if n > MAX_V4_PEERS:
        raise ValueError(f"at most {MAX_V4_PEERS} flows per workload, asked {n}")
    index = np.arange(1, n + 1, dtype=np.uint64)
    ipv6 = rng.random(n) < ipv6_fraction
    saddr = np.zeros((n, 16), dtype=np.uint8)
    daddr = np.zeros((n, 16), dtype=np.uint8)
    v4_peer = np.stack([np.full(n, REMOTE_V4_FIRST_OCTET), index >> 16 & 0xFF, index >> 8 & 0xFF,
                        index & 0xFF], axis=1).astype(np.uint8)
    saddr[:, :12] = np.frombuffer(V4_MAPPED_PREFIX, dtype=np.uint8)
    saddr[:, 12:] = v4_peer
    daddr[:, :12] = np.frombuffer(V4_MAPPED_PREFIX, dtype=np.uint8)
    daddr[:, 12:] = np.frombuffer(POD_V4, dtype=np.uint8)
    v6_peer = np.zeros((n, 16), dtype=np.uint8)
    v6_peer[:, :10] = np.frombuffer(REMOTE_V6_PREFIX, dtype=np.uint8)
    v6_peer[:, 10:] = index.astype(">u8").reshape(-1, 1).view(np.uint8)[:, 2:]
    saddr[ipv6] = v6_peer[ipv6]
    daddr[ipv6] = np.frombuffer(POD_V6, dtype=np.uint8)
    sport = rng.integers(EPHEMERAL_PORTS[0], EPHEMERAL_PORTS[1] + 1, n).astype(np.uint16)
    dport = np.asarray(SERVICE_PORTS, dtype=np.uint16)[rng.integers(0, len(SERVICE_PORTS), n)]
    protos = np.broadcast_to(np.asarray(proto, dtype=np.uint8), (n,)).copy()
    ects = np.broadcast_to(np.asarray(ect, dtype=bool), (n,)).copy()
    keys = flow_keys(saddr, daddr, sport, dport, protos, ipv6)
    return Flows(keys=keys, role=role.astype(np.int8), ipv6=ipv6, proto=protos, saddr=saddr,
                 daddr=daddr, sport=sport, dport=dport, ect=ects)


def concat_flows(parts: list[Flows]) -> Flows:
    return Flows(**{name: np.concatenate([getattr(p, name) for p in parts])
                    for name in Flows.__dataclass_fields__})


# ---- sizes, arrivals and packets ----------------------------------------------

def sample_sizes(rng: np.random.Generator, cdf: tuple[tuple[int, float], ...], n: int) -> np.ndarray:
    """Flow sizes in bytes from a piecewise-linear CDF (inverse transform)."""
    sizes = np.array([0.0] + [s for s, _ in cdf])
    probs = np.array([0.0] + [p for _, p in cdf])
    drawn = np.interp(rng.random(n), probs, sizes)
    return np.maximum(np.rint(drawn).astype(np.int64), MIN_FRAME_BYTES)


def cdf_mean_bytes(cdf: tuple[tuple[int, float], ...]) -> float:
    """Mean flow size of a piecewise-linear CDF (before the one-frame floor)."""
    points = [(0, 0.0), *cdf]
    return sum((p1 - p0) * (s0 + s1) / 2 for (s0, p0), (s1, p1) in zip(points, points[1:], strict=False))


def poisson_starts(rng: np.random.Generator, per_second: float, duration_ns: int) -> np.ndarray:
    """Arrival times (ns, sorted) of a Poisson process over [0, duration)."""
    expected = per_second * duration_ns / L.NS_PER_SEC
    count = int(rng.poisson(expected))
    return np.sort(rng.integers(0, duration_ns, count, dtype=np.int64)).astype(np.uint64)


def packetize(rng: np.random.Generator, sizes: np.ndarray, starts_ns: np.ndarray,
              send_bps: np.ndarray | int, duration_ns: int, frame_bytes: int = MTU_FRAME_BYTES,
              jitter: float = PACING_JITTER) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each flow into frames paced at its send rate; keep what starts before the end.

    Returns (now_ns uint64, wire_len uint32, flow_id int32) sorted by time,
    ties by flow id. Every frame but a flow's last is `frame_bytes` long; the
    last carries the rest, at least MIN_FRAME_BYTES. Each gap between frames
    is the paced gap times a uniform factor in [1 - jitter, 1 + jitter]: the
    mean rate is kept, and senders of equal rate do not lock their phases
    (perfectly periodic senders would make one of them lose every race).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    count = np.maximum(-(-sizes // frame_bytes), 1)
    total = int(count.sum())
    fid = np.repeat(np.arange(sizes.shape[0], dtype=np.int32), count)
    first = np.cumsum(count) - count
    wire = np.full(total, frame_bytes, dtype=np.int64)
    last = first + count - 1
    wire[last] = np.maximum(sizes - (count - 1) * frame_bytes, MIN_FRAME_BYTES)
    gap_ns = np.broadcast_to(np.asarray(frame_bytes * 8 * L.NS_PER_SEC // np.asarray(send_bps),
                                        dtype=np.int64), sizes.shape)
    gaps = np.rint(gap_ns[fid] * (1 + rng.uniform(-jitter, jitter, total))).astype(np.int64)
    gaps[first] = 0  # a flow's first frame leaves at its start
    run = np.cumsum(gaps)
    now = np.asarray(starts_ns, dtype=np.int64)[fid] + run - run[first][fid]
    keep = now < duration_ns
    now, wire, fid = now[keep], wire[keep], fid[keep]
    order = np.lexsort((fid, now))
    return now[order].astype(np.uint64), wire[order].astype(np.uint32), fid[order]


def _bytes_at(bps, ns) -> np.ndarray:
    """Bytes sent at `bps` for `ns` (rounded up; float products cannot overflow)."""
    product = np.asarray(bps, dtype=float) * np.asarray(ns, dtype=float)
    return np.ceil(product / (8 * L.NS_PER_SEC)).astype(np.int64)


def _workload(name: str, seed: int, rate_bps: int, duration_ns: int, packets, flows: Flows,
              settings: dict) -> Workload:
    now, wire, fid = packets
    return Workload(name=name, seed=seed, rate_bps=rate_bps, duration_ns=duration_ns, now_ns=now,
                    wire_len=wire, flow_id=fid, ect=flows.ect[fid], flows=flows, settings=settings)


def merge_packets(*tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge (now, wire, flow_id) tables whose flow ids already index one Flows table."""
    now = np.concatenate([t[0] for t in tables])
    wire = np.concatenate([t[1] for t in tables])
    fid = np.concatenate([t[2] for t in tables])
    order = np.lexsort((fid, now))
    return now[order], wire[order], fid[order]


# ---- generators -------------------------------------------------------------

SIZE_QUANTILES = 4096  # sizes the concurrency model averages over (midpoints of equal-probability slices)
MIN_SENT_SHARE = 0.8  # a concurrency is refused when the run would send less of its flows' bytes


@dataclass(frozen=True)
class ConcurrencyPlan:
    """What a concurrency ask means for a flow-size workload (see run_concurrency)."""

    send_bps: int  # each flow's send rate giving the asked mean concurrency over the run
    most: float  # the largest mean concurrency any send rate gives in this run
    sent_share: float  # expected share of the run's flows' bytes sent before the run ends
    in_flight_bytes: float  # asked concurrency x mean flow size (bytes the active flows hold)


def _size_quantiles(dist: str) -> np.ndarray:
    cdf = SIZE_CDFS[dist]
    sizes = np.array([0.0] + [size for size, _ in cdf])
    probs = np.array([0.0] + [p for _, p in cdf])
    mid = (np.arange(SIZE_QUANTILES) + 0.5) / SIZE_QUANTILES
    return np.maximum(np.rint(np.interp(mid, probs, sizes)), MIN_FRAME_BYTES)


def run_concurrency(sizes: np.ndarray, per_second: float, seconds: float, send_bps: float,
                    frame_bytes: int = MTU_FRAME_BYTES) -> tuple[float, float]:
    """(expected mean concurrency, expected share of the flows' bytes sent) of a run of `seconds`.

    Flows start as a Poisson process of `per_second` from time 0 and are sent
    at `send_bps` in frames of `frame_bytes`; frames after the end are not
    sent. A flow of k frames is active from its first to its last frame,
    (k - 1) gaps (as metrics.flow_counts measures it), so a flow starting at
    u is active for min(life, D - u); averaged over u the run's mean
    concurrency is per_second / D x E[life D - life^2 / 2] (life <= D, else
    D^2 / 2). The same integral over the bytes sent gives the share sent.
    """
    d = seconds
    frames = np.maximum(np.ceil(sizes / frame_bytes), 1)
    life = (frames - 1) * frame_bytes * 8 / send_bps
    active = np.where(life <= d, life * d - life ** 2 / 2, d * d / 2)
    whole = sizes * 8 / send_bps  # time to send all of a flow
    sent = np.where(whole <= d, sizes * (d - whole / 2), send_bps * d * d / 16)
    return float(per_second * active.mean() / d), float(sent.mean() / (sizes.mean() * d))


def plan_concurrency(dist: str, per_second: float, seconds: float, concurrency: float,
                     frame_bytes: int = MTU_FRAME_BYTES) -> ConcurrencyPlan:
    """The send rate at which the run's expected mean concurrency is `concurrency` (bisection on
    run_concurrency, which falls as the send rate rises), and what the run then is."""
    sizes = _size_quantiles(dist)
    most = per_second * seconds / 2 * float(np.mean(np.ceil(sizes / frame_bytes) > 1))
    low, high = 1.0, 1e15  # bit/s; concurrency at `low` is ~most, at `high` ~0
    for _ in range(200):
        mid = (low * high) ** 0.5
        if run_concurrency(sizes, per_second, seconds, mid, frame_bytes)[0] > concurrency:
            low = mid
        else:
            high = mid
        if high / low < 1 + 1e-9:
            break
    send = max(int(round(high)), 1)
    _, sent_share = run_concurrency(sizes, per_second, seconds, send, frame_bytes)
    return ConcurrencyPlan(send, most, sent_share, concurrency * float(sizes.mean()))


def flow_size_rates(dist: str, rate_bps: int, load: float, duration_ns: int, send_bps: int | None,
                    flows: int | None, concurrency: float | None,
                    frame_bytes: int = MTU_FRAME_BYTES) -> tuple[float, float, int | None]:
    """(flow arrivals per second, offered load, send rate) of flow_size_workload, checked.

    With `concurrency`, the send rate is the one at which the run's mean
    concurrency is the one asked (plan_concurrency). The ask is refused with a
    ValueError (naming the bytes those flows hold in flight) when no send rate
    gives it (it is above half the flows that start in the run: a flow is
    active at most from its start to the end), or when the rate that gives it
    is so slow that less than MIN_SENT_SHARE of the flows' bytes would be sent
    before the run ends: the run would then not offer the load it was asked for.
    """
    mean_bytes = cdf_mean_bytes(SIZE_CDFS[dist])
    seconds = duration_ns / L.NS_PER_SEC
    per_second = flows / seconds if flows is not None else load * rate_bps / 8 / mean_bytes
    offered_load = per_second * mean_bytes * 8 / rate_bps
    if concurrency is not None:
        plan = plan_concurrency(dist, per_second, seconds, concurrency, frame_bytes)
        in_flight = plan.in_flight_bytes
        ask = (f"{dist} cannot have {concurrency:g} concurrent flows at {rate_bps:g} bit/s and load "
               f"{offered_load:.3g} in {seconds:g} s: {concurrency:g} flows of this mix hold "
               f"{in_flight / 1e9:.3g} GB in flight ({in_flight * 8 / rate_bps:.3g} s of the rate)")
        fix = "lower the concurrency, or raise the load, the flows or the duration"
        if concurrency >= plan.most * (1 - 1e-6):
            raise ValueError(f"{ask}, but only {per_second * seconds:.3g} flows start in the run and at most "
                             f"{plan.most:.3g} can be active at once on average at any send rate; {fix}")
        if plan.sent_share < MIN_SENT_SHARE:
            raise ValueError(f"{ask}: each flow would be sent at {plan.send_bps:.3g} bit/s and the run would "
                             f"offer load {offered_load * plan.sent_share:.2g}, {plan.sent_share:.0%} of the "
                             f"load asked (the rest still in flight when it ends; at least "
                             f"{MIN_SENT_SHARE:.0%} needed); {fix}")
        send_bps = plan.send_bps
    return per_second, offered_load, send_bps


def check_feasible(name: str, rate_bps: int, duration_ns: int, **options) -> None:
    """Raise the ValueError a generator would, for what can be checked without generating."""
    if name in SIZE_CDFS:
        flow_size_rates(name, rate_bps, options.get("load", DEFAULT_LOAD), duration_ns,
                        options.get("send_bps"), options.get("flows"), options.get("concurrency"),
                        options.get("frame_bytes", MTU_FRAME_BYTES))


def flow_size_workload(dist: str = "websearch", *, seed: int = 1, rate_bps: int = DEFAULT_RATE_BPS,
                       load: float = DEFAULT_LOAD, duration_ns: int = DEFAULT_DURATION_NS,
                       send_bps: int | None = None, ipv6_fraction: float = 0.0,
                       frame_bytes: int = MTU_FRAME_BYTES, flows: int | None = None,
                       concurrency: float | None = None) -> Workload:
    """Poisson flow arrivals with sizes from a published CDF, offering `load` of the rate.

    Arrivals per second = load * rate / (8 * mean size), or `flows` / duration
    when `flows` (flows in the run) is given: the load then follows from it.
    Flows are sent at `send_bps` (default: the Pod's rate), or, when
    `concurrency` (mean flows active at once over the run) is given, at the
    rate that gives that mean in this run (plan_concurrency: Little's law with
    the run's start and end counted). A concurrency the run cannot have (see
    flow_size_rates) is a ValueError saying so.
    """
    cdf = SIZE_CDFS[dist]
    per_second, offered_load, send_bps = flow_size_rates(dist, rate_bps, load, duration_ns, send_bps, flows,
                                                         concurrency, frame_bytes)
    rng = np.random.default_rng(seed)
    stage(f"{dist}: flow arrivals and sizes")
    starts = poisson_starts(rng, per_second, duration_ns)
    sizes = sample_sizes(rng, cdf, starts.shape[0])
    stage(f"{dist}: {starts.shape[0]:,} flow keys")
    flows_table = make_flows(rng, np.full(starts.shape[0], ROLE_BACKGROUND), ipv6_fraction=ipv6_fraction)
    stage(f"{dist}: frames of {starts.shape[0]:,} flows")
    packets = packetize(rng, sizes, starts, send_bps or rate_bps, duration_ns, frame_bytes)
    settings = {"dist": dist, "load": load if flows is None else offered_load,
                "send_bps": send_bps or rate_bps, "ipv6_fraction": ipv6_fraction,
                "frame_bytes": frame_bytes, "flows": flows, "concurrency": concurrency}
    return _workload(dist, seed, rate_bps, duration_ns, packets, flows_table, settings)


ZIPF_FRAME_MIX = ((MIN_FRAME_BYTES, 0.3), (590, 0.1), (MTU_FRAME_BYTES, 0.6))  # (bytes, share of packets)


def zipf_workload(*, seed: int = 1, rate_bps: int = DEFAULT_RATE_BPS, load: float = DEFAULT_LOAD,
                  duration_ns: int = DEFAULT_DURATION_NS, n_flows: int = 10_000, exponent: float = 1.1,
                  ipv6_fraction: float = 0.0) -> Workload:
    """Poisson packet arrivals, each packet's flow drawn by Zipf popularity (rank^-exponent).

    All flows live for the whole run; frame sizes follow ZIPF_FRAME_MIX.
    """
    rng = np.random.default_rng(seed)
    sizes_b = np.array([s for s, _ in ZIPF_FRAME_MIX])
    shares = np.array([p for _, p in ZIPF_FRAME_MIX])
    mean_frame = float((sizes_b * shares).sum())
    stage("zipf: packet arrivals")
    starts = poisson_starts(rng, load * rate_bps / 8 / mean_frame, duration_ns)
    stage(f"zipf: flows of {starts.shape[0]:,} packets")
    popularity = 1.0 / np.arange(1, n_flows + 1) ** exponent
    cum = np.cumsum(popularity / popularity.sum())
    fid = np.minimum(np.searchsorted(cum, rng.random(starts.shape[0]), side="right"), n_flows - 1)
    wire = sizes_b[np.searchsorted(np.cumsum(shares), rng.random(starts.shape[0]), side="right")]
    flows = make_flows(rng, np.full(n_flows, ROLE_BACKGROUND), ipv6_fraction=ipv6_fraction)
    packets = (starts, wire.astype(np.uint32), fid.astype(np.int32))
    settings = {"load": load, "n_flows": n_flows, "exponent": exponent, "ipv6_fraction": ipv6_fraction}
    return _workload("zipf", seed, rate_bps, duration_ns, packets, flows, settings)


def elephants_mice(*, seed: int = 1, rate_bps: int = DEFAULT_RATE_BPS, n_elephants: int = 4,
                   elephant_bps: int | None = None, mice_load: float = 0.3,
                   mouse_max_bytes: int = 50 * KB, mouse_send_bps: int | None = None,
                   duration_ns: int = DEFAULT_DURATION_NS, start_spread: float = 0.2,
                   ipv6_fraction: float = 0.0, elephant_frame_bytes: int = MTU_FRAME_BYTES,
                   mouse_frame_bytes: int = MTU_FRAME_BYTES) -> Workload:
    """Equal elephants that overload the Pod, beside Poisson mice under the rate.

    Each elephant sends at `elephant_bps` (default: the Pod's rate, so n of
    them offer n times the limit) from a start drawn in the first
    `start_spread` of the run to its end. Mice sizes come from the web-search
    CDF below `mouse_max_bytes`; each mouse is sent as a burst at
    `mouse_send_bps` (default 10x the rate), in frames of `mouse_frame_bytes`
    (GSO_FRAME_BYTES models GRO/GSO super-packets). Mice offer `mice_load` of
    the rate.
    """
    rng = np.random.default_rng(seed)
    elephant_bps = elephant_bps or rate_bps
    mouse_send_bps = mouse_send_bps or 10 * rate_bps
    spread_ns = max(int(duration_ns * start_spread), 1)
    e_starts = np.sort(rng.integers(0, spread_ns, n_elephants)).astype(np.uint64)
    e_sizes = _bytes_at(elephant_bps, duration_ns - e_starts.astype(np.int64)) + 1
    mouse_cdf = _truncated_cdf(WEB_SEARCH_CDF, mouse_max_bytes)
    m_starts = poisson_starts(rng, mice_load * rate_bps / 8 / cdf_mean_bytes(mouse_cdf), duration_ns)
    m_sizes = sample_sizes(rng, mouse_cdf, m_starts.shape[0])
    roles = np.concatenate([np.full(n_elephants, ROLE_ELEPHANT), np.full(m_starts.shape[0], ROLE_MOUSE)])
    stage(f"mix: {roles.shape[0]:,} flow keys")
    flows = make_flows(rng, roles, ipv6_fraction=ipv6_fraction)
    stage("mix: frames")
    e_now, e_wire, e_fid = packetize(rng, e_sizes, e_starts, elephant_bps, duration_ns, elephant_frame_bytes)
    m_now, m_wire, m_fid = packetize(rng, m_sizes, m_starts, mouse_send_bps, duration_ns, mouse_frame_bytes)
    packets = merge_packets((e_now, e_wire, e_fid), (m_now, m_wire, m_fid + n_elephants))
    settings = {"n_elephants": n_elephants, "elephant_bps": elephant_bps, "mice_load": mice_load,
                "mouse_max_bytes": mouse_max_bytes, "mouse_send_bps": mouse_send_bps,
                "ipv6_fraction": ipv6_fraction, "elephant_frame_bytes": elephant_frame_bytes,
                "mouse_frame_bytes": mouse_frame_bytes}
    return _workload("mix", seed, rate_bps, duration_ns, packets, flows, settings)


def _truncated_cdf(cdf, max_bytes: int) -> tuple[tuple[int, float], ...]:
    """The part of `cdf` below max_bytes, renormalised to end at probability 1."""
    points = [(0, 0.0), *cdf]
    sizes = np.array([s for s, _ in points], dtype=float)
    probs = np.array([p for _, p in points])
    top = float(np.interp(max_bytes, sizes, probs))
    kept = [(s, p / top) for s, p in cdf if s < max_bytes]
    return (*kept, (max_bytes, 1.0))


SMALL_FLOW_SPAN_DIVISOR = 10  # many_flows: a small flow lasts a tenth of a window


def many_flows(*, seed: int = 1, rate_bps: int = DEFAULT_RATE_BPS, flows_per_window: int = 50_000,
               window_ns: int = 100_000_000, load: float = DEFAULT_LOAD, n_elephants: int = 20,
               elephant_share: float = 0.5, duration_ns: int = 2 * L.NS_PER_SEC,
               ipv6_fraction: float = 0.5) -> Workload:
    """Stress: about `flows_per_window` distinct small flows in every window, plus elephants.

    Small flows are a fresh population each window, one minimal frame each
    (think DNS, SYNs, health checks), offering (1 - elephant_share) of the
    load. Elephants send MTU frames at rates spread log-uniformly from 0.2 %
    to 10 % of the rate (so some sit right at a 1 % threshold), together about
    elephant_share of the load.
    """
    rng = np.random.default_rng(seed)
    windows = -(-duration_ns // window_ns)
    small_per_window = flows_per_window
    small_bytes = (1 - elephant_share) * load * rate_bps * window_ns / (8 * L.NS_PER_SEC)
    frames_per_flow = max(int(small_bytes // (small_per_window * MIN_FRAME_BYTES)), 1)
    n_small = small_per_window * windows
    span_ns = window_ns // SMALL_FLOW_SPAN_DIVISOR  # a small flow's frames all fall in its window
    small_start = (np.repeat(np.arange(windows, dtype=np.int64) * window_ns, small_per_window)
                   + rng.integers(0, window_ns - 2 * span_ns, n_small))
    small_sizes = np.full(n_small, frames_per_flow * MIN_FRAME_BYTES)
    small_send = MIN_FRAME_BYTES * 8 * L.NS_PER_SEC // max(span_ns // frames_per_flow, 1)
    e_frac = np.exp(rng.uniform(np.log(0.002), np.log(0.10), n_elephants))
    e_bps = np.maximum((e_frac / e_frac.sum() * elephant_share * load * rate_bps).astype(np.int64), 1000)
    e_sizes = _bytes_at(e_bps, duration_ns) + 1
    e_starts = rng.integers(0, window_ns, n_elephants).astype(np.uint64)
    roles = np.concatenate([np.full(n_elephants, ROLE_ELEPHANT), np.full(n_small, ROLE_MOUSE)])
    stage(f"manyflows: {roles.shape[0]:,} flow keys")
    flows = make_flows(rng, roles, ipv6_fraction=ipv6_fraction)
    stage("manyflows: elephants' frames")
    e_pk = packetize(rng, e_sizes, e_starts, e_bps, duration_ns)
    stage(f"manyflows: frames of {n_small:,} small flows")
    s_now, s_wire, s_fid = packetize(rng, small_sizes, small_start, small_send, duration_ns, MIN_FRAME_BYTES)
    stage("manyflows: merging in time order")
    packets = merge_packets(e_pk, (s_now, s_wire, s_fid + n_elephants))
    settings = {"flows_per_window": flows_per_window, "window_ns": window_ns, "load": load,
                "n_elephants": n_elephants, "elephant_share": elephant_share, "ipv6_fraction": ipv6_fraction}
    return _workload("manyflows", seed, rate_bps, duration_ns, packets, flows, settings)


# ---- closed loop: AIMD senders beside an unresponsive flood --------------------

Decide = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""decide(now_ns, wire_len, keys, ect) -> verdicts uint8[n], in packet order, state kept between calls."""

AIMD_INITIAL_WINDOW = 10  # frames (RFC 6928)
AIMD_MAX_WINDOW = 100_000  # frames; keeps one round's table bounded


def flood_mix(decide: Decide, *, seed: int = 1, rate_bps: int = DEFAULT_RATE_BPS, n_aimd: int = 4,
              flood_bps: int | None = None, rtt_ns: int = 10_000_000, mice_load: float = 0.1,
              duration_ns: int = 5 * L.NS_PER_SEC, drop_verdicts=frozenset(L.DROPPING_VERDICTS),
              mark_verdicts=frozenset({L.V_MARK}), ipv6_fraction: float = 0.0,
              aimd_ecn: bool = True) -> Workload:
    """TCP-like AIMD flows, one unresponsive UDP flood and some mice, run round by round.

    The AIMD model, per round trip: each flow sends `cwnd` MTU frames spread
    evenly over the round; if any of them was dropped or marked CE, cwnd
    halves (at least 1) and slow start ends; otherwise cwnd doubles in slow
    start and grows by one frame after it. AIMD flows are ECN-capable unless
    `aimd_ecn` is false. The
    flood sends `flood_bps` (default twice the rate) whatever happens; mice are
    Poisson web-search flows below 50 KB sent as bursts. `decide` sees every
    round's frames in time order and must keep its state between calls.
    """
    rng = np.random.default_rng(seed)
    flood_bps = flood_bps or 2 * rate_bps
    mouse_cdf = _truncated_cdf(WEB_SEARCH_CDF, 50 * KB)
    m_starts = poisson_starts(rng, mice_load * rate_bps / 8 / cdf_mean_bytes(mouse_cdf), duration_ns)
    m_sizes = sample_sizes(rng, mouse_cdf, m_starts.shape[0])
    roles = np.concatenate([np.full(n_aimd, ROLE_AIMD), [ROLE_FLOOD], np.full(m_starts.shape[0], ROLE_MOUSE)])
    protos = np.where(roles == ROLE_FLOOD, IPPROTO_UDP, IPPROTO_TCP)
    flows = make_flows(rng, roles, ipv6_fraction=ipv6_fraction, proto=protos,
                       ect=(roles == ROLE_AIMD) & aimd_ecn)
    m_now, m_wire, m_fid = packetize(rng, m_sizes, m_starts, 10 * rate_bps, duration_ns)
    m_fid = m_fid + n_aimd + 1
    flood_gap = MTU_FRAME_BYTES * 8 * L.NS_PER_SEC // flood_bps
    cwnd = np.full(n_aimd, AIMD_INITIAL_WINDOW, dtype=np.int64)
    slow_start = np.ones(n_aimd, dtype=bool)
    offsets = rng.integers(0, rtt_ns, n_aimd)  # de-synchronise the senders
    flood_phase = int(offsets[0]) % flood_gap if n_aimd else 0
    out_now, out_wire, out_fid, out_verdict = [], [], [], []
    rounds = -(-duration_ns // rtt_ns)
    for number, round_start in enumerate(range(0, duration_ns, rtt_ns)):
        if number % 50 == 0:
            stage(f"flood: round trip {number:,} of {rounds:,}")
        round_end = min(round_start + rtt_ns, duration_ns)
        a_fid = np.repeat(np.arange(n_aimd, dtype=np.int32), cwnd)
        seq = np.arange(a_fid.shape[0]) - np.repeat(np.cumsum(cwnd) - cwnd, cwnd)
        a_now = round_start + (offsets[a_fid] + seq * rtt_ns // cwnd[a_fid]) % rtt_ns
        f_now = np.arange(round_start + flood_phase, round_end, flood_gap)
        lo, hi = np.searchsorted(m_now, [round_start, round_end])
        now = np.concatenate([a_now, f_now, m_now[lo:hi]]).astype(np.uint64)
        fid = np.concatenate([a_fid, np.full(f_now.shape[0], n_aimd, dtype=np.int32), m_fid[lo:hi]])
        wire = np.concatenate([np.full(a_fid.shape[0] + f_now.shape[0], MTU_FRAME_BYTES), m_wire[lo:hi]])
        keep = now < round_end
        order = np.lexsort((fid[keep], now[keep]))
        now, fid, wire = now[keep][order], fid[keep][order], wire[keep][order].astype(np.uint32)
        verdicts = np.asarray(decide(now, wire, flows.keys[fid], flows.ect[fid]), dtype=np.uint8)
        dropped = np.isin(verdicts, list(drop_verdicts)) | np.isin(verdicts, list(mark_verdicts))
        congested = np.zeros(n_aimd, dtype=bool)
        aimd_rows = fid < n_aimd
        congested[np.unique(fid[aimd_rows & dropped])] = True
        cwnd = np.where(congested, np.maximum(cwnd // 2, 1),
                        np.where(slow_start, cwnd * 2, cwnd + 1)).clip(1, AIMD_MAX_WINDOW)
        slow_start &= ~congested
        out_now.append(now)
        out_wire.append(wire)
        out_fid.append(fid)
        out_verdict.append(verdicts)
    packets = (np.concatenate(out_now), np.concatenate(out_wire), np.concatenate(out_fid))
    settings = {"n_aimd": n_aimd, "flood_bps": flood_bps, "rtt_ns": rtt_ns, "mice_load": mice_load,
                "ipv6_fraction": ipv6_fraction, "aimd_ecn": aimd_ecn}
    wl = _workload("flood", seed, rate_bps, duration_ns, packets, flows, settings)
    return Workload(**{**wl.__dict__, "verdicts": np.concatenate(out_verdict)})


# ---- registry -----------------------------------------------------------------

OPEN_LOOP = {
    "websearch": lambda **kw: flow_size_workload("websearch", **kw),
    "datamining": lambda **kw: flow_size_workload("datamining", **kw),
    "zipf": zipf_workload,
    "mix": elephants_mice,
    "manyflows": many_flows,
}
CLOSED_LOOP = {"flood": flood_mix}
# The generator behind each name: its keyword-only arguments are the workload's knobs (knobs.py).
GENERATORS = {"websearch": flow_size_workload, "datamining": flow_size_workload, "zipf": zipf_workload,
              "mix": elephants_mice, "manyflows": many_flows, "flood": flood_mix}
WORKLOAD_NAMES = tuple(OPEN_LOOP) + tuple(CLOSED_LOOP)


def open_loop(name: str, **kwargs) -> Workload:
    """An open-loop workload by name (see OPEN_LOOP)."""
    if name in CLOSED_LOOP:
        raise ValueError(f"workload {name!r} is closed loop: call flood_mix with a decide function")
    if name not in OPEN_LOOP:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOAD_NAMES)}")
    return OPEN_LOOP[name](**kwargs)
