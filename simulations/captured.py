"""A capture as a workload: what `natra-sim recommend --pcap` (and a sweep point) runs.

Owns: turning a pcap or pcapng file (any link type pcapio reads: Ethernet,
Linux cooked SLL/SLL2, raw IP; headers-only or whole frames), optionally cut
to one Pod's traffic in one direction, into a `Workload`: per-frame time
(from the first frame), original length (what the data path charges, also
for a headers-only capture), flow key and ECN, plus a Flows table read back
from the keys; and the options that name a capture in a sweep point (its
path, its content digest, the Pods and the direction), so a point's key
changes when the file does.
Rule: the frames are those `natra-sim replay` reads (replay.select_records,
replay.wire_frame), in time order (a stable sort: `tcpdump -i any` may write
a few frames out of order); a capture is one run, there is no seed.
Must not know: the model, metrics, the grid.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
from natra.simulations import workloads as W

from natra.kernel import layout as L

CAPTURE = "pcap"  # the workload name of a capture in points and rows
DIGEST_CHARS = 16
READ_CHUNK = 1 << 20


class CaptureWorkloadError(ValueError):
    """A capture that gives no workload (unreadable, or no frame left after --pod)."""


def digest(path: str | Path) -> str:
    """The first DIGEST_CHARS hex digits of the file's SHA-256 (a point's key follows the content)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:DIGEST_CHARS]


def capture_options(path: str | Path, pods: list[str], direction: str) -> tuple:
    """The (name, value) options that name a capture in a Point (sorted, as knobs.parse_options)."""
    resolved = Path(path).resolve()
    return tuple(sorted({"capture": str(resolved), "sha256": digest(resolved),
                         "pod": ",".join(pods), "direction": direction}.items()))


@functools.lru_cache(maxsize=2)
def capture_workload(options: tuple) -> W.Workload:
    """The Workload of a capture named by capture_options (cached: every configuration of a sweep
    runs on the same frames); a cut-off end's warning is in its settings["warnings"]."""
    from natra.reference.key import KEY_LEN, parse_frame
    from natra.simulations.pcapio import read_capture
    from natra.simulations.replay import DIRECTIONS, pod_address, select_records, wire_frame

    opts = dict(options)
    path = opts["capture"]
    pods = [pod_address(a) for a in opts["pod"].split(",") if a]
    warnings: list[str] = []
    records, _ = select_records(read_capture(path, warn=warnings.append), pods, DIRECTIONS[opts["direction"]])
    if not records:
        raise CaptureWorkloadError(f"{path}: no frame" + (f" to or from {opts['pod']} in direction "
                                                          f"{opts['direction']}" if pods else ""))
    n = len(records)
    keys = np.empty((n, KEY_LEN), dtype=np.uint8)
    ect = np.empty(n, dtype=bool)
    for i, rec in enumerate(records):
        parsed = parse_frame(wire_frame(rec))
        keys[i] = np.frombuffer(parsed.key, dtype=np.uint8)
        ect[i] = parsed.ecn != 0
    time_ns = np.fromiter((r.time_ns for r in records), dtype=np.int64, count=n)
    wire = np.fromiter((r.orig_len for r in records), dtype=np.uint32, count=n)
    order = np.argsort(time_ns, kind="stable")
    time_ns, wire, keys, ect = time_ns[order], wire[order], keys[order], ect[order]
    unique, flow_id = np.unique(keys.view(f"V{KEY_LEN}").reshape(-1), return_inverse=True)
    flow_keys = unique.view(np.uint8).reshape(-1, KEY_LEN)
    flow_id = flow_id.reshape(-1).astype(np.int32)
    f = len(flow_keys)
    flow_ect = np.zeros(f, dtype=bool)
    flow_ect[flow_id[ect]] = True
    flows = W.Flows(keys=flow_keys, role=np.full(f, W.ROLE_BACKGROUND, dtype=np.int8),
                    ipv6=(flow_keys[:, 39] & L.KEY_IPV6) != 0, proto=flow_keys[:, 38].copy(),
                    saddr=flow_keys[:, 0:16].copy(), daddr=flow_keys[:, 16:32].copy(),
                    sport=flow_keys[:, 32:34].copy().view(">u2").reshape(-1).astype(np.uint16),
                    dport=flow_keys[:, 34:36].copy().view(">u2").reshape(-1).astype(np.uint16),
                    ect=flow_ect)
    now = (time_ns - time_ns[0]).astype(np.uint64)
    return W.Workload(name=CAPTURE, seed=0, rate_bps=0, duration_ns=int(now[-1]) + 1, now_ns=now,
                      wire_len=wire, flow_id=flow_id, ect=ect, flows=flows,
                      settings={**opts, "warnings": warnings})
