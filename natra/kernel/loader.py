"""Load Natra's prebuilt BPF object for one Pod: size the maps, load, write the config.

Owns: turning a Pod's two `ConfigValues` into a loaded object (both programs
and their maps) through libbpf: open the shipped ELF, set natra_sketch to
2 * depth * width and natra_flows to the flow-table size, load (keeping each
program's verifier log), write both directions' config; then hand out program
and map fds, pin the maps, and close.
Rule: describe, then load, then pin (a load that fails leaves nothing pinned). Every failure is a
`LoadError` that names its step and keeps the cause; a verifier rejection
carries the verifier log. The object is never compiled here.
Must not know: attach modes, links, netns, CNI; heavy imports (numpy, scapy,
pyroute2) are never imported on this path.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from natra.kernel import layout as L
from natra.kernel import libbpf, ticks
from natra.kernel.maps import write_config
from natra.kernel.params import ConfigValues, clock_tick_ns

OBJECT_DIR = Path(__file__).resolve().parents[1] / "bpf"  # natra/bpf, built by make bpf
VARIANTS = ("natra", "natra_trace", "natra_parse", "natra_compat", "natra_shared",
            "natra_shared_compat")  # make bpf builds them all
# natra.bpf.o takes bpf_res_spin_lock (kernels 6.15+); natra_compat.bpf.o, the
# same program with bpf_spin_lock, is what the default load falls back to.
RES_LOCK_KERNEL = (6, 15)
DEFAULT_FLOW_TABLE = 4096
# Bytes of verifier log kept per program; the kernel keeps the log's tail when
# it is longer, which is where the rejected instruction is.
VERIFIER_LOG_BYTES = 1 << 20
SKETCH_DIRS = L.NDIRS  # both directions share the sketch map, each its own half


class LoadError(Exception):
    """Loading failed at `step`; `verifier_log` holds the verifier's words, if any."""

    def __init__(self, step: str, message: str, verifier_log: str = ""):
        text = f"load natra object: {step}: {message}"
        if verifier_log:
            text += "\n--- verifier log (tail) ---\n" + verifier_log[-4000:]
        super().__init__(text)
        self.step = step
        self.verifier_log = verifier_log


class ObjectMissing(LoadError, FileNotFoundError):
    """The compiled object is not there: the package was built without `make bpf`."""


def object_path(variant: str = "natra") -> str:
    """Path of a built object: 'natra' | 'natra_trace' | 'natra_parse'."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown BPF object variant {variant!r}; one of {', '.join(VARIANTS)}")
    path = OBJECT_DIR / f"{variant}.bpf.o"
    if not path.is_file():
        raise ObjectMissing("object", f"{path} is not built; run `make bpf` (needs clang)")
    return str(path)


def _checked_configs(configs: Sequence[ConfigValues]) -> list[ConfigValues]:
    if not 1 <= len(configs) <= L.NDIRS:
        raise LoadError("config", f"expected {L.NDIRS} direction configs, got {len(configs)}")
    width, depth = configs[0].width, configs[0].depth
    if width <= 0 or width & (width - 1) or width > L.MAX_WIDTH:
        raise LoadError("config", f"width {width} must be a power of two <= {L.MAX_WIDTH}")
    if not 1 <= depth <= L.MAX_DEPTH:
        raise LoadError("config", f"depth {depth} outside 1..{L.MAX_DEPTH}")
    for d, cfg in enumerate(configs):
        if (cfg.width, cfg.depth) != (width, depth):
            raise LoadError("config", f"direction {d} has sketch {cfg.width}x{cfg.depth}, "
                            f"direction 0 has {width}x{depth}; both share one sketch map")
    full = list(configs)
    if len(full) < L.NDIRS:  # a missing direction is 'not limited' with the same sketch shape
        off = ConfigValues(0, 0, 0, 0, configs[0].window_ns, 1, width, depth,
                           configs[0].flags & L.CFG_TEST_CLOCK)
        full += [off] * (L.NDIRS - len(full))
    return full


def _kernel_release() -> tuple[int, int]:
    """(major, minor) of the running kernel; (0, 0) when unreadable."""
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return (0, 0)


class BpfObject:
    """One loaded copy of the object: both programs and their private maps."""

    def __init__(self, obj_ptr: int, path: str, prog_fds: dict[int, int], map_fds: dict[str, int],
                 log_bufs: list):
        self._obj = obj_ptr
        self.path = path
        self._prog_fds = prog_fds
        self._map_fds = map_fds
        self._log_bufs = log_bufs  # libbpf holds pointers into these until close
        self._shape: tuple[str, int, int, int] = (path, 0, 0, 0)

    @classmethod
    def load(cls, configs: Sequence[ConfigValues], *, flow_table: int = DEFAULT_FLOW_TABLE,
             path: str | None = None, maps_only: bool = False,
             reuse: Mapping[str, int] | None = None) -> BpfObject:
        """Load `path`, or by default natra.bpf.o where the kernel has bpf_res_spin_lock
        and natra_compat.bpf.o where it has not (or where natra.bpf.o fails to load).

        `maps_only`: make the maps (config written) and load no program: a Pod's
        maps for the shared interim program (natra.kernel.interim), in a few ms.
        `reuse` ({map name: fd}): bind the programs to a Pod's existing maps, whose
        contents (config included) are kept, instead of making new ones."""
        if path is not None:
            return cls._load(configs, flow_table, path, maps_only, reuse)
        if _kernel_release() >= RES_LOCK_KERNEL:
            try:
                return cls._load(configs, flow_table, object_path(), maps_only, reuse)
            except ObjectMissing:
                raise
            except LoadError as e:
                if e.step != "load":
                    raise
        return cls._load(configs, flow_table, object_path("natra_compat"), maps_only, reuse)

    @classmethod
    def _load(cls, configs: Sequence[ConfigValues], flow_table: int, path: str, maps_only: bool = False,
              reuse: Mapping[str, int] | None = None) -> BpfObject:
        full = _checked_configs(configs)
        if not 1 <= flow_table <= (1 << 24):
            raise LoadError("config", f"flow table size {flow_table} outside 1..2^24")
        if flow_table & (flow_table - 1):
            raise LoadError("config", f"flow table size {flow_table} is not a power of two")
        if not os.path.isfile(path):
            raise ObjectMissing("object", f"{path} does not exist; run `make bpf`")
        width, depth = full[0].width, full[0].depth
        try:
            libbpf.clear_messages()
            obj = libbpf.object_open(path)
        except libbpf.LibbpfError as e:
            raise LoadError("open", str(e)) from e
        log_bufs: list = []
        try:
            try:
                libbpf.map_set_max_entries(libbpf.find_map(obj, "natra_sketch"), SKETCH_DIRS * depth * width)
                libbpf.map_set_max_entries(libbpf.find_map(obj, "natra_flows"), flow_table)
                libbpf.map_set_max_entries(libbpf.find_map(obj, "natra_flow_keys"), flow_table)
            except libbpf.LibbpfError as e:
                raise LoadError("size maps", str(e)) from e
            try:
                for name, fd in (reuse or {}).items():
                    libbpf.map_reuse_fd(libbpf.find_map(obj, name), fd)
            except libbpf.LibbpfError as e:
                raise LoadError("reuse maps", str(e)) from e
            progs = {}
            for direction, name in L.PROG_NAMES.items():
                try:
                    progs[direction] = libbpf.find_program(obj, name)
                except libbpf.LibbpfError as e:
                    raise LoadError("find program", str(e)) from e
                if maps_only:
                    libbpf.program_set_autoload(progs.pop(direction), False)
                    continue
                buf = ctypes.create_string_buffer(VERIFIER_LOG_BYTES)
                libbpf.program_set_log_buf(progs[direction], buf)
                log_bufs.append(buf)
            try:
                libbpf.object_load(obj)
            except libbpf.LibbpfError as e:
                verifier_log = "\n".join(b.value.decode(errors="replace") for b in log_bufs if b.value)
                raise LoadError("load", str(e), verifier_log) from e
            prog_fds = {d: libbpf.program_fd(p) for d, p in progs.items()}
            map_fds = {}
            for name in L.MAP_NAMES + ("natra_trace",):
                try:
                    map_fds[name] = libbpf.map_fd(libbpf.find_map(obj, name))
                except libbpf.LibbpfError:
                    if name != "natra_trace":  # only the trace build has it
                        raise
            self = cls(obj, path, prog_fds, map_fds, log_bufs)
            self._shape = (path, width, depth, flow_table)
        except BaseException:
            libbpf.object_close(obj)
            raise
        if reuse:
            return self  # the Pod's config is in its maps already
        try:
            self.configure(full)
        except LoadError:
            self.close()
            raise
        return self

    def configure(self, configs: Sequence[ConfigValues]) -> None:
        """Write both directions' config (a Pod's; a pooled object gets its Pod's here)."""
        full = _checked_configs(configs)
        if self._shape[1] and (full[0].width, full[0].depth) != self._shape[1:3]:
            raise LoadError("config", f"sketch {full[0].width}x{full[0].depth} asked of an object "
                            f"loaded for {self._shape[1]}x{self._shape[2]}")
        try:
            tick = ticks.coarse_tick_ns()
            for direction, cfg in enumerate(full):
                write_config(self.map_fd("natra_config"), direction, cfg, flow_slots=self._shape[3],
                             tick_ns=clock_tick_ns(cfg, tick))
        except OSError as e:
            raise LoadError("write config", str(e)) from e

    @property
    def shape(self) -> tuple[str, int, int, int]:
        """What a Pod must ask for to be given this object: (path, width, depth, flow table)."""
        return self._shape

    def prog_fd(self, direction: int) -> int:
        self._check_open()
        if direction not in self._prog_fds:
            raise KeyError(f"{self.path} was loaded without its programs (maps only)")
        return self._prog_fds[direction]

    def map_fd(self, name: str) -> int:
        self._check_open()
        if name not in self._map_fds:
            raise KeyError(f"map {name!r} not in {self.path} (maps: {', '.join(self._map_fds)})")
        return self._map_fds[name]

    @property
    def map_names(self) -> tuple[str, ...]:
        return tuple(self._map_fds)

    def pin_maps(self, directory: str) -> None:
        """Pin every map as <directory>/<map name> (bpffs; names have no dots)."""
        from natra.kernel.bpfsys import obj_pin

        self._check_open()
        for name, fd in self._map_fds.items():
            obj_pin(fd, os.path.join(directory, name))

    @property
    def closed(self) -> bool:
        return self._obj is None

    def close(self) -> None:
        """Release the object and its fds (pinned maps and links stay alive)."""
        if self._obj is not None:
            libbpf.object_close(self._obj)
            self._obj = None
            self._prog_fds.clear()
            self._map_fds.clear()
            self._log_bufs = []

    def _check_open(self) -> None:
        if self._obj is None:
            raise ValueError("BPF object already closed")

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
