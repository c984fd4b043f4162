"""Data-path parameters of one Pod direction, and the config the kernel gets.

Owns: the user-facing tuning of the data path (rate, burst, reserve, sketch
size, threshold, window, ECN) with units, the default rules that fill what a
user did not say (burst clamp, reserve, threshold), and `to_config`, the one
function that turns parameters into the integers of `struct natra_config`.
The model and the loader both call it, so they cannot disagree.
Rule: pure integer arithmetic, no I/O, no clock, no numpy.
Must not know: CNI, maps, attach modes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from natra.kernel import layout as L

# Defaults, each with its reason (docs/tuning.md has the evidence).
DEFAULT_WIDTH = 1024  # columns; 4 x 1024 cells keep recall 1.0 at 1 % thresholds
DEFAULT_DEPTH = 4
DEFAULT_WINDOW_NS = 100_000_000  # 100 ms: ages a stopped flow out within 200 ms
DEFAULT_EARLY_PERCENT = 50  # yellow zone starts half-way up the heavy part
DEFAULT_FLOW_TABLE = 4096  # heavy-flow slots per Pod when nothing else decides
# A drop policer needs hundreds of ms of rate for TCP to reach the limit
# (a bulk TCP flow through a drop policer reached 0.97 of the limit with 500 ms
# of burst and 0.50 with 100 ms; docs/cni.md says why the default clamps there).
DEFAULT_BURST_TIME_NS = 500_000_000
# Never smaller than four 64 KiB GSO super-packets: one for the heavy zone,
# the reserve for two, and room for the early zone.
MIN_DEFAULT_BURST_BITS = 4 * 65536 * 8
# Policing mode's bucket is never smaller than that either, whatever was asked:
# a frame larger than the bucket can never pass a drop policer, and the heavy
# zone and the mice reserve must each hold whole super-packets.
POLICE_BURST_FLOOR_BITS = MIN_DEFAULT_BURST_BITS
# The reserve holds two GSO super-packets of mice, or 5 % of the burst if more.
MIN_RESERVE_BITS = 2 * 65536 * 8
RESERVE_PERCENT = 5
# A flow is heavy above 1/100 of what the Pod may send in a window, and never
# below 64 KiB: a 10 KB request or a 64 KB response stays a mouse.
THRESHOLD_DIVISOR = 100
MIN_THRESHOLD_BYTES = 64 * 1024
MIN_WINDOW_NS = 1_000_000  # 1 ms
MAX_WINDOW_NS = 60 * L.NS_PER_SEC
MAX_FLOW_TABLE = 1 << 20
# The flow table sized from what it must hold (flow_table_entries): only heavy
# flows use a slot, and a direction has at most ceil(rate * window / threshold)
# of them per window while its senders keep to the rate; slots of the current
# and the previous window are live (x2), and x2 more for slack. A flow's slot
# is its hash, so of k flows in m slots about k / 2m find theirs held: the
# floor of 1,024 slots (104 KiB with the keys) makes two of four heavy flows
# meet 1 time in 170, and gives nearly every Pod one table size, which the
# node agent's ready objects match. Never above 65,536 slots when derived
# (docs/design.md, "The heavy-flow table").
FLOW_TABLE_HEADROOM = 4
MIN_AUTO_FLOW_TABLE = 1024
MAX_AUTO_FLOW_TABLE = 1 << 16
# Shaping: how frames over the limit are handled.  "police" drops them in the
# program (no queue); "shape" classifies them into HTB queues that pace.
MODE_POLICE = "police"
MODE_SHAPE = "shape"
MODES = (MODE_POLICE, MODE_SHAPE)
# Heavy classes per direction: 16 concurrent heavy flows each get a queue of
# their own (four-flow fairness needs distinct queues; hashing 4 flows into 16
# classes would collide a third of the time).
DEFAULT_CLASSES = 16
# A heavy class's queue holds this much time of the Pod's rate: what a bulk
# flow's RTT grows by at most, and what lets TCP fill the limit without loss.
DEFAULT_QUEUE_NS = 20_000_000
# Shaping: the sketch window holds at least this many thresholds of rate. With
# 100 ms and the 64 KiB threshold floor, a flow at 10 Mbit/s needs more than
# half the link to be heavy, so four bulk flows of a 10 Mbit/s Pod were all
# "mice" and shared the mice queue (measured: 15 % retransmissions, a 10 KB
# request p99 of 130 ms). With 16 thresholds per window a flow is heavy above
# about 1/16 of the rate, while a 10 KB request stays a mouse.
SHAPE_WINDOW_THRESHOLDS = 16
MIN_QUEUE_NS = 1_000_000
MAX_QUEUE_NS = 1_000_000_000
# The major number of Natra's HTB handles ("NT"): a root qdisc with this
# handle on a host veth, or any qdisc on a Natra IFB, is Natra's own.
QDISC_MAJOR = 0x4E54


class ParamError(ValueError):
    """A parameter outside what the data path can represent; says which."""


@dataclass(frozen=True)
class DataPathParams:
    """Everything that shapes one direction of one Pod."""

    rate_bps: int  # bit/s
    burst_bits: int  # bits: the bucket depth B
    reserve_bits: int  # bits of B only mice may spend
    width: int = DEFAULT_WIDTH  # sketch columns (power of two)
    depth: int = DEFAULT_DEPTH  # sketch rows
    threshold_bytes: int = MIN_THRESHOLD_BYTES  # bytes per window that make a flow heavy
    window_ns: int = DEFAULT_WINDOW_NS  # ns
    ecn: bool = True  # mark CE instead of signalling by loss where possible
    early_percent: int = DEFAULT_EARLY_PERCENT  # % of the heavy zone that is green
    mode: str = MODE_POLICE  # MODE_POLICE (drop in the program) or MODE_SHAPE (HTB queues)
    classes: int = DEFAULT_CLASSES  # shaping: heavy classes (per-flow queues)
    queue_ns: int = DEFAULT_QUEUE_NS  # shaping: ns of rate a heavy class may queue
    # False: shaping's sketch step without the direction's lock (CFG_UNLOCKED): cheaper per
    # frame, exact in one CPU's order, but concurrent frames may lose a charge (design.md,
    # "Concurrency"). Policing ignores it: its buckets need the lock.
    sketch_lock: bool = True

    def validate(self) -> DataPathParams:
        checks = [
            (L.MIN_RATE_BPS <= self.rate_bps <= L.MAX_RATE_BPS,
             f"rate {self.rate_bps} bit/s outside 1 bit/s .. 1 Pbit/s"),
            (0 < self.burst_bits <= L.MAX_BURST_BITS,
             f"burst {self.burst_bits} bits outside 1 .. 2^34"),
            (0 <= self.reserve_bits < self.burst_bits,
             f"reserve {self.reserve_bits} bits must be below the burst {self.burst_bits}"),
            (self.width > 0 and self.width & (self.width - 1) == 0 and self.width <= L.MAX_WIDTH,
             f"width {self.width} must be a power of two <= {L.MAX_WIDTH}"),
            (1 <= self.depth <= L.MAX_DEPTH, f"depth {self.depth} outside 1..{L.MAX_DEPTH}"),
            (self.threshold_bytes >= 1, f"threshold {self.threshold_bytes} bytes must be >= 1"),
            (MIN_WINDOW_NS <= self.window_ns <= MAX_WINDOW_NS,
             f"window {self.window_ns} ns outside 1 ms .. 60 s"),
            (0 <= self.early_percent <= 100, f"early percent {self.early_percent} outside 0..100"),
            (self.mode in MODES, f"mode {self.mode!r} is not one of {', '.join(MODES)}"),
            (1 <= self.classes <= L.MAX_CLASSES, f"classes {self.classes} outside 1..{L.MAX_CLASSES}"),
            (MIN_QUEUE_NS <= self.queue_ns <= MAX_QUEUE_NS,
             f"queue {self.queue_ns} ns outside 1 ms .. 1 s"),
        ]
        for ok, message in checks:
            if not ok:
                raise ParamError(message)
        return self

    def with_(self, **changes) -> DataPathParams:
        return replace(self, **changes)


def default_burst_bits(rate_bps: int, requested_bits: int | None,
                       burst_time_ns: int = DEFAULT_BURST_TIME_NS,
                       floor_bits: int = POLICE_BURST_FLOOR_BITS) -> int:
    """The burst Natra applies: what was asked, clamped to `burst_time_ns` of rate,
    and never below `floor_bits`.

    Runtimes send 2^32-1 bits (containerd) or ~4 GiB (CRI-O) when the Pod says
    nothing; taken literally that is seconds of line rate, hence the clamp.
    A drop policer cannot pass a frame larger than its bucket, and TCP sends
    GSO super-packets of up to 64 KiB, so policing mode raises a smaller asked
    burst to its floor (four super-packets): the conformance promise is then
    R*t + max(B, floor). A mode that queues instead of dropping may pass its
    own floor (1 keeps every asked burst exactly).
    """
    cap = max(rate_bps * burst_time_ns // L.NS_PER_SEC, MIN_DEFAULT_BURST_BITS)
    burst = min(requested_bits or cap, cap)
    return min(max(burst, floor_bits), L.MAX_BURST_BITS)


def burst_floor_raised(requested_bits: int | None, applied_bits: int) -> bool:
    """Did the floor raise an asked burst (so the promise is R*t + floor, not R*t + B)?"""
    return bool(requested_bits) and applied_bits > requested_bits


def default_reserve_bits(burst_bits: int) -> int:
    """Mice reserve: 5 % of the burst or two GSO super-packets, at most half."""
    return min(max(burst_bits * RESERVE_PERCENT // 100, MIN_RESERVE_BITS), burst_bits // 2)


def default_threshold_bytes(rate_bps: int, window_ns: int) -> int:
    per_window_bytes = rate_bps * window_ns // (8 * L.NS_PER_SEC)
    return max(per_window_bytes // THRESHOLD_DIVISOR, MIN_THRESHOLD_BYTES)


def shape_window_ns(rate_bps: int, threshold_bytes: int | None = None) -> int:
    """Shaping's default window: 100 ms, or the time the rate takes to send
    SHAPE_WINDOW_THRESHOLDS thresholds when that is longer (at most 60 s)."""
    threshold = threshold_bytes or default_threshold_bytes(rate_bps, DEFAULT_WINDOW_NS)
    needed = SHAPE_WINDOW_THRESHOLDS * threshold * 8 * L.NS_PER_SEC // max(rate_bps, 1)
    return min(max(DEFAULT_WINDOW_NS, needed), MAX_WINDOW_NS)


def flow_table_entries(params) -> int:
    """Heavy-flow entries a Pod needs, from its directions' parameters (None: unlimited).

    Per policing direction: ceil(rate * window / (8e9 * threshold)) heavy flows per
    window, times FLOW_TABLE_HEADROOM; summed (both directions share the table),
    rounded up to a power of two, clamped to MIN/MAX_AUTO_FLOW_TABLE. Shaping does
    not use the table. A heavy flow whose slot another live flow holds shares it
    (more heavy flows than this, or two that meet by hash); the program counts
    each such frame (FLOW_OVERFLOW).
    """
    need = 0
    for p in params:
        if p is None or p.mode != MODE_POLICE:
            continue
        per_window_bytes = p.rate_bps * p.window_ns // (8 * L.NS_PER_SEC)
        need += FLOW_TABLE_HEADROOM * (-(-per_window_bytes // p.threshold_bytes))
    return min(max(flow_slots(need), MIN_AUTO_FLOW_TABLE), MAX_AUTO_FLOW_TABLE)


def flow_slots(entries: int | None) -> int | None:
    """Slots of a heavy-flow table asked to hold `entries` (None: not asked): the next
    power of two, since a flow's slot is its hash masked by the size."""
    if entries is None:
        return None
    return 1 << max(int(entries) - 1, 0).bit_length()


def params_for(rate_bps: int, burst_bits: int | None = None, **tuning) -> DataPathParams:
    """Parameters for a rate (and optional asked burst) with every default applied."""
    # Shaping queues what the bucket cannot pay, so it keeps an asked burst exactly
    # (its own floor, one packet of the device, is applied by natra.kernel.shaping).
    floor = 1 if tuning.get("mode") == MODE_SHAPE else POLICE_BURST_FLOOR_BITS
    burst_time = tuning.pop("burst_time_ns", DEFAULT_BURST_TIME_NS)
    burst = default_burst_bits(rate_bps, burst_bits, burst_time, floor)
    if tuning.get("mode") == MODE_SHAPE and "window_ns" not in tuning:
        tuning["window_ns"] = shape_window_ns(rate_bps, tuning.get("threshold_bytes"))
    window = tuning.get("window_ns", DEFAULT_WINDOW_NS)
    tuning.setdefault("threshold_bytes", default_threshold_bytes(rate_bps, window))
    reserve = tuning.pop("reserve_bits", None)
    if reserve is None:
        reserve = default_reserve_bits(burst)
    return DataPathParams(rate_bps=rate_bps, burst_bits=burst, reserve_bits=reserve, **tuning).validate()


@dataclass(frozen=True)
class ConfigValues:
    """The integers of struct natra_config (field names and units as there)."""

    rate_bps: int
    tau_nbit: int
    heavy_line_nbit: int
    early_line_nbit: int
    window_ns: int
    threshold_bytes: int
    width: int
    depth: int
    flags: int
    classes: int = 0  # shaping: heavy classes
    qdisc_major: int = 0  # shaping: major number of the direction's HTB
    redirect_ifindex: int = 0  # shaping out of the Pod: the IFB; 0 = none

    def as_tuple(self) -> tuple[int, ...]:
        return (self.rate_bps, self.tau_nbit, self.heavy_line_nbit, self.early_line_nbit,
                self.window_ns, self.threshold_bytes, self.width, self.depth, self.flags,
                self.classes, self.qdisc_major, self.redirect_ifindex)

    @property
    def shaping(self) -> bool:
        return bool(self.flags & L.CFG_SHAPE)


def coarse_clock_slack(params: DataPathParams, tick_ns: int) -> int:
    """nbit a policed bucket gives up to read the coarse clock (R x one tick), or 0 when it
    keeps the fine one: no tick known, or the slack would take more than a quarter of the
    heavy zone (a burst of a few ticks of R)."""
    if tick_ns <= 0 or params.mode != MODE_POLICE:
        return 0
    slack = params.rate_bps * tick_ns
    heavy_zone = (params.burst_bits - params.reserve_bits) * 1_000_000_000
    return slack if 4 * slack <= heavy_zone else 0


def clock_tick_ns(config: ConfigValues, tick_ns: int) -> int:
    """natra_config.tick_ns for a direction on a node whose timer tick is `tick_ns`: the
    tick where the program may read a tick-grained clock (shaping, and policing whose
    plan took a tick of rate off its bucket), which it then reads as jiffies x tick
    (bpf/natra.h, "the tick clock"); 0 where it must not (the fine clock, the test
    clock, a direction not limited) or the tick is unknown."""
    if tick_ns <= 0 or not config.flags & L.CFG_ENABLED or config.flags & L.CFG_TEST_CLOCK:
        return 0
    return tick_ns if config.flags & (L.CFG_SHAPE | L.CFG_COARSE_CLOCK) else 0


def promised_burst_bits(config: ConfigValues, tick_ns: int) -> int:
    """The B of the R*t + B a config keeps: its bucket, plus the tick of rate it gave up
    to read the coarse clock."""
    slack = config.rate_bps * tick_ns if config.flags & L.CFG_COARSE_CLOCK else 0
    return (config.tau_nbit + slack) // 1_000_000_000


def to_config(params: DataPathParams | None, *, test_clock: bool = False,
              width: int = DEFAULT_WIDTH, depth: int = DEFAULT_DEPTH,
              redirect_ifindex: int = 0, coarse_tick_ns: int = 0) -> ConfigValues:
    """struct natra_config for one direction; None means 'not limited'.

    An unlimited direction still carries the sketch shape (width, depth), since
    both directions share one sketch map. In shaping mode the frames of the
    direction are classified into the HTB with handle QDISC_MAJOR, and, when
    `redirect_ifindex` is set, sent to that device (the IFB out of the Pod).

    `coarse_tick_ns` (the node's timer tick) lets a policed direction read the
    cheaper coarse clock, which lags by less than a tick: its bucket (and the
    lines in it) is made R x tick smaller (`coarse_clock_slack`), so that at most
    R*t + B still passes; 0 keeps the fine clock and the whole bucket.
    """
    clock = L.CFG_TEST_CLOCK if test_clock else 0
    if params is None:
        return ConfigValues(0, 0, 0, 0, DEFAULT_WINDOW_NS, 1, width, depth, clock)
    p = params.validate()
    slack = 0 if test_clock else coarse_clock_slack(p, coarse_tick_ns)
    tau = p.burst_bits * 1_000_000_000 - slack
    heavy_line = tau - p.reserve_bits * 1_000_000_000
    early_line = heavy_line * p.early_percent // 100
    flags = L.CFG_ENABLED | (L.CFG_ECN if p.ecn else 0) | clock | (L.CFG_COARSE_CLOCK if slack else 0)
    if p.mode == MODE_SHAPE:
        flags |= L.CFG_SHAPE | (0 if p.sketch_lock else L.CFG_UNLOCKED)
        return ConfigValues(p.rate_bps, tau, heavy_line, early_line, p.window_ns, p.threshold_bytes,
                            p.width, p.depth, flags, p.classes, QDISC_MAJOR, redirect_ifindex)
    return ConfigValues(p.rate_bps, tau, heavy_line, early_line, p.window_ns,
                        p.threshold_bytes, p.width, p.depth, flags)
