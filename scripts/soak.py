#!/usr/bin/env python3
"""Soak: minutes of Pod churn with traffic; do pins, kernel memory, logs and fds stay bounded?

Owns: the churn loop (Pods made and removed through the real chain, Debian's
ptp + host-local then natra, each Pod carrying traffic while it lives), the
periodic sample of everything that could leak, and the census of Natra's BPF
objects straight from the kernel (BPF_{MAP,PROG,LINK}_GET_NEXT_ID, not the
file system). The census is also what the kernel tests use to prove that no
object of theirs survives (tests/kernel/test_concurrency.py imports it).
Rule: everything is private to the run: Pod namespaces nt9-sk*, Pod subnet
10.219.128.0/17, a private bpffs mount for the pins, a temp dir for the log
and IPAM; all of it is removed at the end, also on Ctrl-C. Objects of this
run are told apart from anyone else's Natra objects by their rates: every
Pod gets a rate from MARKER_RATES, which no one else uses, and a leaked
program or link keeps its natra_config map (and that rate) alive.
Must not know: how the plugin or the data path work inside.

    sudo python3 scripts/soak.py --minutes 10 --pods 4 > soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from natra.kernel import bpfsys  # noqa: E402 - after the path fix, for runs from a checkout
from natra.kernel import layout as L  # noqa: E402

# bpf(2) commands natra/kernel/bpfsys.py does not wrap (yet).
NATRA_PREFIX = "natra"  # every map and program of Natra is named natra_*
# Rates (bit/s) no other test or engineer uses: 21.9xxx Mbit/s in steps of 7 bit/s.
MARKER_RATE_BASE = 21_900_003
MARKER_RATES = range(MARKER_RATE_BASE, MARKER_RATE_BASE + 7 * 10_000, 7)
SAMPLE_EVERY_S = 10.0
# Pins of one limited Pod: 5 maps + meta + 2 programs + 2 tcx links.
PINS_PER_POD = len(L.MAP_NAMES) + 1 + 2 * L.NDIRS
TRAFFIC_S = 2  # iperf3 seconds per Pod life
PREFIX = "nt9-sk"
SUBNET = "10.219.128.0/17"
LOG_MAX_BYTES = 32 * 1024  # small, so a soak of minutes exercises rotation many times
BPFFS_PRESETS = frozenset({"maps.debug", "progs.debug"})  # what a fresh bpffs mount shows
PLUGIN_TIMEOUT_S = 60


# ---- census of Natra's BPF objects, from the kernel ------------------------------------

def _memlock(fd: int) -> int:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Census:
    """Natra objects alive in the kernel (everyone's), and those carrying our marker rates."""

    maps: int = 0
    progs: int = 0
    links: int = 0
    memlock_bytes: int = 0  # of every natra_* map
    marked_config_maps: list[int] = field(default_factory=list)  # ids of natra_config maps with a marker rate
    marked_meta_maps: list[int] = field(default_factory=list)  # ids of natra_meta maps naming a marker id

    def as_dict(self) -> dict:
        return {"maps": self.maps, "progs": self.progs, "links": self.links,
                "memlock_bytes": self.memlock_bytes,
                "marked_config_maps": len(self.marked_config_maps),
                "marked_meta_maps": len(self.marked_meta_maps)}


def _config_rates(fd: int) -> list[int]:
    size = ctypes.sizeof(L.Config)
    rates = []
    for direction in range(L.NDIRS):
        raw = bpfsys.map_lookup(fd, struct.pack("=I", direction), size)
        if raw:
            rates.append(struct.unpack_from("=Q", raw, 0)[0])
    return rates


def census(marker_rates=MARKER_RATES, marker_text: str | None = None) -> Census:
    """Walk every BPF map, program and link id and count Natra's."""
    found = Census()
    rates = set(marker_rates)
    natra_progs = set()
    for prog_id in bpfsys.next_ids(bpfsys.BPF_PROG_GET_NEXT_ID):
        try:
            fd = bpfsys.prog_get_fd_by_id(prog_id)
        except OSError:
            continue  # freed meanwhile
        try:
            if bpfsys.prog_info(fd)["name"].startswith(NATRA_PREFIX):
                found.progs += 1
                natra_progs.add(prog_id)
        finally:
            os.close(fd)
    for link_id in bpfsys.next_ids(bpfsys.BPF_LINK_GET_NEXT_ID):
        try:
            fd = bpfsys.link_get_fd_by_id(link_id)
        except OSError:
            continue
        try:
            if bpfsys.link_info(fd)["prog_id"] in natra_progs:
                found.links += 1
        finally:
            os.close(fd)
    for map_id in bpfsys.next_ids(bpfsys.BPF_MAP_GET_NEXT_ID):
        try:
            fd = bpfsys.map_get_fd_by_id(map_id)
        except OSError:
            continue
        try:
            info = bpfsys.map_info(fd)
            if not info["name"].startswith(NATRA_PREFIX):
                continue
            found.maps += 1
            found.memlock_bytes += _memlock(fd)
            if info["name"] == "natra_config" and rates & set(_config_rates(fd)):
                found.marked_config_maps.append(map_id)
            if info["name"] == "natra_meta" and marker_text:
                raw = bpfsys.map_lookup(fd, bytes(4), info["value_size"]) or b""
                if marker_text.encode() in raw:
                    found.marked_meta_maps.append(map_id)
        except OSError:
            continue
        finally:
            os.close(fd)
    return found


def pinned_memlock(root: str) -> tuple[int, int]:
    """(pins, memlock bytes of the maps pinned) under a bpffs root."""
    pins = memlock = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if dirpath == root and name in BPFFS_PRESETS:
                continue
            pins += 1
            try:
                fd = bpfsys.obj_get(os.path.join(dirpath, name))
            except OSError:
                continue
            try:
                bpfsys.map_info(fd)  # raises for programs and links
                memlock += _memlock(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
    return pins, memlock


# ---- the churn -------------------------------------------------------------------------

def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


class Soak:
    def __init__(self, pods: int, seed: int):
        from natra.lab import cnichain

        self.pods = pods
        self.rng = random.Random(seed)
        self.tmp = tempfile.mkdtemp(prefix="nt9-soak-")
        self.root = os.path.join(self.tmp, "bpffs")
        os.mkdir(self.root)
        _run("mount", "-t", "bpf", "bpf", self.root)
        self.log_file = os.path.join(self.tmp, "log", "natra.log")
        os.mkdir(os.path.join(self.tmp, "bin"))
        self.bin_dir = cnichain.make_bin_dir(os.path.join(self.tmp, "bin"))
        natra = cnichain.natra_entry(bpffsRoot=self.root, stateDir=os.path.join(self.tmp, "state"),
                                     logFile=self.log_file, logMaxBytes=LOG_MAX_BYTES)
        conflist = cnichain.ptp_conflist("nt9soak", SUBNET, then=[natra])
        conflist["plugins"][0]["ipam"]["dataDir"] = os.path.join(self.tmp, "ipam")
        self.chain = cnichain.Chain(conflist, self.bin_dir)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"pods": 0, "add_failures": 0, "del_failures": 0, "limited": 0, "traffic_bytes": 0,
                       "goodput_over_bound": 0, "add_s": [], "del_s": []}
        self.errors: list[str] = []
        self.samples: list[dict] = []

    def _netns(self, name: str) -> str:
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return f"/var/run/netns/{name}"

    def _traffic(self, ns: str, ip: str, port: int, reverse: bool) -> int:
        from natra.lab import iperf

        try:
            return iperf.run(ns, ip, TRAFFIC_S, reverse=reverse, port=port).received_bytes
        except RuntimeError:
            return 0

    def _one_life(self, slot: int, generation: int) -> None:
        from natra.kernel import datapath
        from natra.lab import cnichain

        name = f"{PREFIX}{slot}-{generation}"
        with self.lock:
            marker = self.rng.choice(MARKER_RATES)  # bit/s, both directions
        att = cnichain.Attachment(container_id=f"{name}-c0ffee", netns=self._netns(name),
                                  k8s_args={"K8S_POD_NAMESPACE": "soak", "K8S_POD_NAME": name},
                                  capability_args={"bandwidth": {
                                      "ingressRate": marker, "ingressBurst": marker,
                                      "egressRate": marker, "egressBurst": marker}})
        try:
            started = time.monotonic()
            try:
                result = self.chain.add(att)
            except cnichain.ChainError as e:
                with self.lock:
                    self.counts["add_failures"] += 1
                    self.errors.append(str(e)[:300])
                return
            add_s = time.monotonic() - started
            found = datapath.inspect(att.container_id, root=self.root)
            ip = result["ips"][0]["address"].split("/")[0]
            got = self._traffic(name, ip, 5300 + slot, reverse=bool(generation % 2))
            burst_bits = found.meta["limits"]["to_pod"]["burst_bits"] if found and found.meta else marker
            bound_bytes = (marker * TRAFFIC_S + burst_bits) / 8 * 1.05  # R*t+B, 5 % for iperf3's timing
            with self.lock:
                self.counts["add_s"].append(add_s)
                self.counts["limited"] += int(found is not None and found.ok)
                self.counts["traffic_bytes"] += got
                self.counts["goodput_over_bound"] += int(got > bound_bytes)
        finally:
            started = time.monotonic()
            try:
                self.chain.delete(att)
            except Exception as e:  # noqa: BLE001 - counted, and the netns is removed anyway
                with self.lock:
                    self.counts["del_failures"] += 1
                    self.errors.append(str(e)[:300])
            with self.lock:
                self.counts["del_s"].append(time.monotonic() - started)
                self.counts["pods"] += 1
            _run("ip", "netns", "del", name, check=False)

    def _slot(self, slot: int) -> None:
        generation = 0
        while not self.stop.is_set():
            try:
                self._one_life(slot, generation)
            except Exception as e:  # noqa: BLE001 - one bad life must not end the soak
                with self.lock:
                    self.errors.append(f"slot {slot}: {e!r}"[:300])
            generation += 1

    def sample(self, now_s: float) -> dict:
        pins, memlock = pinned_memlock(self.root)
        everyone = census()
        log_bytes = sum(os.path.getsize(p) for p in (self.log_file, self.log_file + ".1")
                        if os.path.exists(p))
        with open("/proc/sys/fs/file-nr") as f:
            file_nr = int(f.read().split()[0])
        row = {"t_s": round(now_s, 1), "pods_done": self.counts["pods"], "pins": pins,
               "pinned_memlock_bytes": memlock, "natra_maps_all": everyone.maps,
               "natra_progs_all": everyone.progs, "natra_links_all": everyone.links,
               "marked_config_maps": len(everyone.marked_config_maps), "log_bytes": log_bytes,
               "soak_fds": len(os.listdir("/proc/self/fd")), "system_files": file_nr,
               "netns_left": len([n for n in os.listdir("/var/run/netns") if n.startswith(PREFIX)])}
        self.samples.append(row)
        return row

    def run(self, seconds: float) -> None:
        threads = [threading.Thread(target=self._slot, args=(i,), daemon=True) for i in range(self.pods)]
        begin = time.monotonic()
        self.sample(0.0)
        for t in threads:
            t.start()
        try:
            while time.monotonic() - begin < seconds:
                time.sleep(min(SAMPLE_EVERY_S, max(0.0, seconds - (time.monotonic() - begin))))
                print(json.dumps(self.sample(time.monotonic() - begin)), file=sys.stderr, flush=True)
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=120)
        time.sleep(0.5)
        self.final = self.sample(time.monotonic() - begin)

    def close(self) -> None:
        self.stop.set()
        for name in os.listdir("/var/run/netns"):
            if name.startswith(PREFIX):
                _run("ip", "netns", "del", name, check=False)
        _run("umount", "-l", self.root, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(soak: Soak, seconds: float, leaked_after: Census) -> dict:
    rows = soak.samples[1:] or soak.samples
    peak = {k: max(r[k] for r in rows) for k in ("pins", "pinned_memlock_bytes", "log_bytes", "soak_fds",
                                                  "natra_maps_all", "netns_left")}
    counts = soak.counts
    # One Pod holds a fixed set of pins; at most `pods` live at once.
    per_pod_pins = max((r["pins"] / max(1, r["netns_left"]) for r in rows if r["netns_left"]), default=0)
    return {
        "seconds": round(seconds), "pods_in_parallel": soak.pods, "pods_churned": counts["pods"],
        "add_failures": counts["add_failures"], "del_failures": counts["del_failures"],
        "limited_after_add": counts["limited"], "traffic_mbytes": round(counts["traffic_bytes"] / 1e6, 1),
        "traffic_over_r_t_plus_b": counts["goodput_over_bound"],
        "add_s_p50": _percentile(counts["add_s"], 0.5), "add_s_p99": _percentile(counts["add_s"], 0.99),
        "del_s_p50": _percentile(counts["del_s"], 0.5), "del_s_p99": _percentile(counts["del_s"], 0.99),
        "peak": peak, "first_sample": soak.samples[0], "final_sample": soak.final,
        "pins_per_live_pod_max": round(per_pod_pins, 1),
        "log_bound_bytes": 2 * LOG_MAX_BYTES,
        "after_cleanup": {"marked_config_maps": len(leaked_after.marked_config_maps),
                          "natra_objects_all": {"maps": leaked_after.maps, "progs": leaked_after.progs,
                                                "links": leaked_after.links}},
        "bounded": {
            "pins": soak.final["pins"] == 0 and peak["pins"] <= soak.pods * PINS_PER_POD,
            "log": peak["log_bytes"] <= 2 * LOG_MAX_BYTES,
            "fds": peak["soak_fds"] <= soak.samples[0]["soak_fds"] + 4 * soak.pods + 16,
            "no_marked_maps_after": not leaked_after.marked_config_maps,
        },
        "errors": soak.errors[:10],
        "samples": soak.samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--pods", type=int, default=4, help="Pods alive at once (one churn thread each)")
    ap.add_argument("--seed", type=int, default=9)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak needs root (bpf, netns)", file=sys.stderr)
        return 2
    seconds = args.minutes * 60
    soak = Soak(args.pods, args.seed)
    try:
        soak.run(seconds)
    finally:
        soak.close()
    with contextlib.suppress(Exception):
        time.sleep(1.0)
    report = summary(soak, seconds, census())
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0 if all(report["bounded"].values()) and not report["add_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
