"""Throw-away network namespaces, veth pairs and bpffs roots for kernel tests.

Owns: building the little networks the kernel tests need and taking them
down again, always (every builder is a context manager whose `finally`
removes what it made, also when the test fails half-way).

    remote node netns --veth-- host (root netns) --veth-- Pod netns
      10.a.b.2/30       10.a.b.1        10.c.d.1    10.c.d.2/30

The host side forwards between the two veths with per-interface forwarding
(net.ipv4.conf.<if>.forwarding=1 on our two veths only), so the host's global
`ip_forward` and every other interface stay as they were. Traffic into the Pod
comes from another namespace, as on a node: a sender in the host's own
namespace would hide how a limiter treats TCP.

Also: the one rule by which a kernel test skips (`kernel_skip_reason`: root,
iproute2, BTF, bpffs, the built objects, and whatever tools, plugins, files,
modules and libraries a module names); every kernel test module and fixture
asks it.

Rule: every name starts with NAME_PREFIX so parallel test suites never collide
and a leak is easy to attribute. Must not know: Natra's programs or maps
(beyond the names of the built objects a test needs).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

NAME_PREFIX = "nt3-"
NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
BPF_FS_MAGIC = 0xCAFE4A11
NODE_BPFFS = "/sys/fs/bpf"  # where a node (and Natra's default pin root) has bpffs
IPROUTE2 = ("ip", "tc")
ALL_OBJECTS = ("natra", "natra_trace", "natra_parse", "natra_compat")  # `make bpf` builds all four
# Subnets are drawn from 10.200.0.0/13 in /30 steps and checked against the
# host's routes, so two parallel topologies do not share a prefix.
SUBNET_POOL = ipaddress.ip_network("10.200.0.0/13")
SUBNET_PREFIX = 30
SUBNET_TRIES = 64


def run(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command (in netns `ns` if given) and return its stdout."""
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def kernel_skip_reason(*, bpf: bool = True, objects: tuple[str, ...] = ("natra",), node_bpffs: bool = False,
                       tools: tuple[str, ...] = (), cni_plugins: tuple[str, ...] = (),
                       files: dict[str, str] | None = None, modules: tuple[str, ...] = (),
                       libraries: tuple[str, ...] = ()) -> str | None:
    """None when a kernel test module can run here, else why not: the one skip rule of the kernel tests.

    Always root and iproute2 (`ip`, `tc`). With `bpf` (the default) a kernel
    with BTF, a private bpffs mount and the built BPF `objects` (variants of
    natra/bpf/<variant>.bpf.o); with `node_bpffs` bpffs mounted at
    /sys/fs/bpf, for tests that drive Natra as a node would. Besides: `tools`
    on PATH, Debian's `cni_plugins` (containernetworking-plugins), `files`
    (path -> the Debian package that brings it), importable `modules`,
    loadable shared `libraries`. No reason starts with ci_tally.NOT_APPLICABLE:
    under NATRA_REQUIRE_KERNEL=1 every one of these skips is a failure.
    """
    if os.geteuid() != 0:
        return "needs root"
    for tool in IPROUTE2:
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2)"
    if bpf:
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            return "kernel without BTF"
        problem = _bpffs_mount_problem()
        if problem:
            return problem
    if node_bpffs and not is_bpffs(NODE_BPFFS):
        return f"bpffs is not mounted at {NODE_BPFFS} (mount -t bpf bpf {NODE_BPFFS})"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if cni_plugins:
        from natra.lab.cnichain import DEBIAN_CNI_DIR

        files = {**{os.path.join(DEBIAN_CNI_DIR, p): "containernetworking-plugins" for p in cni_plugins},
                 **(files or {})}
    for path, package in (files or {}).items():
        if not os.path.exists(path):
            return f"needs {path} (apt-get install {package})"
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"needs the Python module {module}"
    for library in libraries:
        try:
            ctypes.CDLL(library)
        except OSError as e:
            return f"needs {library}: {e}"
    if bpf:
        from natra.kernel.loader import LoadError, object_path

        try:
            for variant in objects:
                object_path(variant)
        except LoadError as e:
            return str(e)
    return None


@functools.lru_cache(maxsize=1)
def _bpffs_mount_problem() -> str | None:
    """Kernel tests mount private bpffs instances: can we?"""
    try:
        with private_bpffs():
            return None
    except (OSError, RuntimeError) as e:
        return f"cannot mount a private bpffs: {e}"


def unique_tag() -> str:
    return secrets.token_hex(3)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the body with this thread inside netns `ns` (sockets made here stay there)."""
    libc = _libc()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to own netns: {os.strerror(err)}")
    finally:
        os.close(own)
        os.close(target)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace with `lo` up; deleted (with its veths) on exit."""
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def link_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def delete_link(ifname: str) -> None:
    run("ip", "link", "del", ifname, check=False)


@contextlib.contextmanager
def veth(host_if: str, ns: str, peer_if: str = "eth0", *, quiet: bool = False) -> Iterator[str]:
    """A veth pair: `host_if` in the root netns, `peer_if` inside `ns`.

    quiet=True turns off IPv6 and ARP on both ends so that only frames a test
    sends itself cross the pair (needed to match a trace frame for frame).
    """
    tmp_peer = f"{host_if}x"
    run("ip", "link", "add", host_if, "type", "veth", "peer", "name", tmp_peer)
    try:
        run("ip", "link", "set", tmp_peer, "netns", ns)
        run("ip", "link", "set", tmp_peer, "name", peer_if, ns=ns)
        if quiet:
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6", "1")
            run("sysctl", "-qw", f"net.ipv6.conf.{peer_if}.disable_ipv6=1", ns=ns)
            run("ip", "link", "set", host_if, "arp", "off")
            run("ip", "link", "set", peer_if, "arp", "off", ns=ns)
        run("ip", "link", "set", peer_if, "up", ns=ns)
        run("ip", "link", "set", host_if, "up")
        yield host_if
    finally:
        delete_link(host_if)


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _routes_in_use() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "prohibit", "blackhole"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    used = _routes_in_use()
    count = 1 << (SUBNET_PREFIX - SUBNET_POOL.prefixlen)
    for _ in range(SUBNET_TRIES):
        index = random.randrange(count)
        base = int(SUBNET_POOL.network_address) + (index << (32 - SUBNET_PREFIX))
        net = ipaddress.ip_network(f"{ipaddress.IPv4Address(base)}/{SUBNET_PREFIX}")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free /30 in the test pool")


@dataclass(frozen=True)
class Endpoint:
    """One namespace joined to the host by a veth, with a /30 between them."""

    ns: str  # namespace name
    host_if: str  # host-side veth name (root netns)
    ns_if: str  # interface name inside the namespace
    host_ip: str  # host-side address (the namespace's gateway)
    ip: str  # the namespace's address

    @property
    def host_ifindex(self) -> int:
        return int(open(f"/sys/class/net/{self.host_if}/ifindex").read())


@contextlib.contextmanager
def endpoint(role: str, tag: str, *, quiet: bool = False, address: bool = True) -> Iterator[Endpoint]:
    """A namespace `nt3-<role>-<tag>` with veth `nt3-<tag><role>` on the host.

    With address=True it gets a /30 with the host, a default route through the
    host, and forwarding on the host-side veth.
    """
    ns_name = f"{NAME_PREFIX}{role}-{tag}"
    host_if = f"{NAME_PREFIX}{tag}{role}"
    with netns(ns_name), veth(host_if, ns_name, quiet=quiet):
        host_ip = ip = ""
        if address:
            net = free_subnet()
            host_ip, ip = (str(a) for a in list(net.hosts())[:2])
            run("ip", "addr", "add", f"{host_ip}/{SUBNET_PREFIX}", "dev", host_if)
            run("ip", "addr", "add", f"{ip}/{SUBNET_PREFIX}", "dev", "eth0", ns=ns_name)
            run("ip", "route", "add", "default", "via", host_ip, ns=ns_name)
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "1")
        yield Endpoint(ns=ns_name, host_if=host_if, ns_if="eth0", host_ip=host_ip, ip=ip)


@dataclass(frozen=True)
class Topology:
    pod: Endpoint
    remote: Endpoint


@contextlib.contextmanager
def pod_and_remote(tag: str | None = None) -> Iterator[Topology]:
    """A Pod and a remote node, routed through the host in both directions."""
    tag = tag or unique_tag()
    with endpoint("p", tag) as pod, endpoint("r", tag) as remote:
        yield Topology(pod=pod, remote=remote)


# ---- bpffs -----------------------------------------------------------------

class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def is_bpffs(path: str) -> bool:
    buf = _StatFs()
    if _libc().statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


# Entries a fresh bpffs mount shows on its own (the kernel's preloaded iterators).
BPFFS_PRESETS = frozenset({"maps.debug", "progs.debug"})


def bpffs_entries(root: str) -> list[str]:
    """Every path under `root` (relative), deepest first."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


@contextlib.contextmanager
def private_bpffs() -> Iterator[str]:
    """A fresh bpffs instance mounted on a temp dir; unmounted (freeing every
    pin in it) on exit, so a failed test cannot leave pins behind."""
    mnt = tempfile.mkdtemp(prefix="nt3-bpffs-")
    try:
        run("mount", "-t", "bpf", "bpf", mnt)
        try:
            yield mnt
        finally:
            run("umount", "-l", mnt, check=False)
    finally:
        os.rmdir(mnt)


# ---- processes ---------------------------------------------------------------

@contextlib.contextmanager
def process(argv: list[str], ns: str | None = None) -> Iterator[subprocess.Popen]:
    """A background process (in netns `ns`), killed and reaped on exit."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else argv
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def leftovers() -> list[str]:
    """Network namespaces and links with our prefix that still exist."""
    names = [n.split()[0] for n in run("ip", "netns", "list").splitlines() if n.startswith(NAME_PREFIX)]
    names += [n for n in os.listdir("/sys/class/net") if n.startswith(NAME_PREFIX)]
    return names
