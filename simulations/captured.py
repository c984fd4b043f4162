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

import hashlib
from pathlib import Path

import numpy as np
from natra.simulations import workloads as W

from natra.kernel import layout as L

CAPTURE = "pcap"  # the workload name of a capture in points and rows
DIGEST_CHARS = 16
READ_CHUNK = 1 << 20  # bytes hashed at a time; frames between progress reports


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


LOADED: dict[tuple, W.Workload] = {}  # this process's captures, by their options (at most LOADED_MAX)
LOADED_MAX = 2


def prime(options: tuple, workload: W.Workload) -> None:
    """Hand this process a capture already read elsewhere (the Dask client sends it to each worker,
    so workers neither read nor parse the file, nor need its path)."""
    while len(LOADED) >= LOADED_MAX:
        LOADED.pop(next(iter(LOADED)))
    LOADED[options] = workload


def capture_workload(options: tuple) -> W.Workload:
    """The Workload of a capture named by capture_options (kept: every configuration of a sweep runs
    on the same frames); a cut-off end's warning is in its settings["warnings"]."""
    if options not in LOADED:
        prime(options, _read(options))
    return LOADED[options]


def _read(options: tuple) -> W.Workload:
    from natra.reference.key import KEY_LEN, parse_frame
    from natra.simulations.pcapio import read_capture
    from natra.simulations.progress import stage
    from natra.simulations.replay import DIRECTIONS, pod_address, wire_frame

    opts = dict(options)
    path = opts["capture"]
    pods = {pod_address(a) for a in opts["pod"].split(",") if a}
    at = slice(16, 32) if DIRECTIONS[opts["direction"]] == L.DIR_TO_POD else slice(0, 16)
    warnings: list[str] = []
    keys_, ect_, time_, wire_ = [], [], [], []
    for i, rec in enumerate(read_capture(path, warn=warnings.append)):
        if i % READ_CHUNK == 0:
            stage(f"capture: frame {i:,}")
        parsed = parse_frame(wire_frame(rec))  # each frame parsed once: the key decides --pod too
        if pods and parsed.key[at] not in pods:
            continue
        keys_.append(parsed.key)
        ect_.append(parsed.ecn != 0)
        time_.append(rec.time_ns)
        wire_.append(rec.orig_len)
    if not keys_:
        raise CaptureWorkloadError(f"{path}: no frame" + (f" to or from {opts['pod']} in direction "
                                                          f"{opts['direction']}" if pods else ""))
    n = len(keys_)
    keys = np.frombuffer(b"".join(keys_), dtype=np.uint8).reshape(n, KEY_LEN)
    ect = np.array(ect_, dtype=bool)
    time_ns = np.array(time_, dtype=np.int64)
    wire = np.array(wire_, dtype=np.uint32)
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
