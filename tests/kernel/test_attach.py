"""Tests of natra/kernel/attach.py on real veths: tcx and clsact, replace, detach, neighbours.

What is attached is read back from the kernel (BPF_PROG_QUERY for tcx, the
netlink filter dump for clsact, `tc` for qdiscs), never from the filesystem
alone. "Neighbours" are other agents' programs on the same hook: a tiny
counting program (raw instructions, below) shows that they keep running while
Natra is attached and after Natra is removed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct

import netns
import pytest

from natra.kernel import attach, bpfsys, maps
from natra.kernel import layout as L
from natra.kernel.params import to_config

TC_ACT_UNSPEC = -1  # == TCX_NEXT: "continue with the next program"
FRAMES = 20
FOREIGN_PRIO = 50000  # a neighbour's clsact filter that runs after ours (higher number = later)


SKIP_REASON = netns.kernel_skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]


# ---- a neighbour: counts frames in an ARRAY map and passes them on ------------------------

_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_BPF_MAP_TYPE_ARRAY = 2


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


class Counter:
    """A SCHED_CLS program that adds 1 to map[0] per frame and returns `verdict`."""

    def __init__(self, verdict: int = TC_ACT_UNSPEC):
        self.map_fd = bpfsys.map_create(_BPF_MAP_TYPE_ARRAY, 4, 8, 1, b"counter")
        code = b"".join([
            _insn(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(r10 - 4) = 0
            _insn(0xBF, dst=2, src=10),  # r2 = r10
            _insn(0x07, dst=2, imm=-4),  # r2 += -4
            _insn(0x18, dst=1, src=1, imm=self.map_fd), _insn(0),  # r1 = map (ld_imm64)
            _insn(0x85, imm=1),  # call bpf_map_lookup_elem
            _insn(0x15, dst=0, off=2, imm=0),  # if r0 == 0 goto +2
            _insn(0xB7, dst=1, imm=1),  # r1 = 1
            _insn(0xDB, dst=0, src=1, imm=0),  # lock *(u64 *)(r0 + 0) += r1
            _insn(0xB7, dst=0, imm=verdict),  # r0 = verdict
            _insn(0x95),  # exit
        ])
        insns = ctypes.create_string_buffer(code, len(code))
        license_ = ctypes.create_string_buffer(b"GPL")
        attr = bpfsys._attr("IIQQIIQII16s", _BPF_PROG_TYPE_SCHED_CLS, len(code) // 8,
                            ctypes.addressof(insns), ctypes.addressof(license_), 0, 0, 0, 0, 0,
                            b"nt3_counter")
        self.prog_fd = bpfsys._call(_BPF_PROG_LOAD, attr, "prog_load counter")
        self.prog_id = attach.prog_id(self.prog_fd)

    @property
    def count(self) -> int:
        return struct.unpack("=Q", bpfsys.map_lookup(self.map_fd, bytes(4), 8))[0]

    def close(self) -> None:
        os.close(self.prog_fd)
        os.close(self.map_fd)


@pytest.fixture
def counter():
    made = []

    def make(verdict: int = TC_ACT_UNSPEC) -> Counter:
        made.append(Counter(verdict))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.close()


# ---- fixtures -----------------------------------------------------------------------

@pytest.fixture
def veth():
    """A quiet veth pair (no IPv6, no ARP): only the frames a test sends cross it."""
    with netns.endpoint("a", netns.unique_tag(), quiet=True, address=False) as ep:
        yield ep


@pytest.fixture
def bpffs():
    with netns.private_bpffs() as root:
        yield root
        assert set(netns.bpffs_entries(root)) <= netns.BPFFS_PRESETS


@pytest.fixture
def natra_loader():
    """Factory of loaded Natra objects (unlimited: every frame passes), closed after."""
    from natra.kernel.loader import BpfObject

    loaded = []

    def load():
        off = to_config(None)
        loaded.append(BpfObject.load([off, off]))
        return loaded[-1]

    try:
        yield load
    finally:
        for obj in loaded:
            obj.close()


def send_frames(ep: netns.Endpoint, direction: int, count: int = FRAMES) -> None:
    """Frames through the hook of `direction`: host side for to_pod, Pod side for from_pod."""
    frame = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
             + bytes.fromhex("4500002e000000004011") + b"\x00\x00" + bytes([10, 0, 0, 1, 10, 0, 0, 2])
             + b"\x30\x39\x30\x39\x00\x1a\x00\x00" + b"x" * 18)

    def open_socket(ifname: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((ifname, 0))
        return s

    if direction == L.DIR_TO_POD:
        sock = open_socket(ep.host_if)
    else:
        with netns.entered(ep.ns):
            sock = open_socket(ep.ns_if)
    with sock:
        for _ in range(count):
            sock.send(frame)


def natra_frames(obj, direction: int) -> int:
    return maps.read_counters(obj.map_fd("natra_counters"), direction)[L.C_FRAMES]


def tc_filters(ifname: str, direction: int) -> list[dict]:
    """Filters on a clsact hook as `tc -j` lists them (chain headers left out)."""
    dump = json.loads(netns.run("tc", "-j", "filter", "show", "dev", ifname, HOOK[direction]) or "[]")
    return [f for f in dump if "options" in f]


def qdiscs(ifname: str) -> str:
    return netns.run("tc", "qdisc", "show", "dev", ifname)

HOOK = {L.DIR_TO_POD: "egress", L.DIR_FROM_POD: "ingress"}
directions = pytest.mark.parametrize("direction", [L.DIR_TO_POD, L.DIR_FROM_POD],
                                     ids=["to_pod", "from_pod"])


# ---- tcx ------------------------------------------------------------------------------

@directions
def test_tcx_attach_replace_detach(veth, bpffs, natra_loader, direction):
    idx = veth.host_ifindex
    pin = os.path.join(bpffs, "link")
    first, second = natra_loader(), natra_loader()

    attach.attach_tcx(first.prog_fd(direction), idx, direction, pin)
    link = attach.tcx_link(pin)
    assert link is not None and link.ifindex == idx
    assert link.attach_type == attach.TCX_ATTACH_TYPE[direction]
    assert attach.tcx_prog_ids(idx, direction) == [attach.prog_id(first.prog_fd(direction))]
    assert attach.tcx_prog_ids(idx, 1 - direction) == []
    send_frames(veth, direction)
    assert natra_frames(first, direction) == FRAMES

    attach.attach_tcx(second.prog_fd(direction), idx, direction, pin)  # replace
    assert attach.tcx_prog_ids(idx, direction) == [attach.prog_id(second.prog_fd(direction))]
    send_frames(veth, direction)
    assert natra_frames(first, direction) == FRAMES  # the old one no longer runs
    assert natra_frames(second, direction) == FRAMES

    assert attach.detach_tcx(pin) is True
    assert attach.tcx_prog_ids(idx, direction) == []
    assert not os.path.exists(pin)
    assert attach.detach_tcx(pin) is False  # nothing left to detach


def test_tcx_chain_runs_the_next_program(veth, bpffs, natra_loader, counter):
    """Our pass verdict (TCX_NEXT) lets a second tcx program on the hook run."""
    idx, direction = veth.host_ifindex, L.DIR_TO_POD
    obj, other = natra_loader(), counter()
    pin = os.path.join(bpffs, "link")
    attach.attach_tcx(obj.prog_fd(direction), idx, direction, pin)
    other_link = bpfsys.link_create(other.prog_fd, idx, attach.TCX_ATTACH_TYPE[direction])
    try:
        ours = attach.prog_id(obj.prog_fd(direction))
        assert attach.tcx_prog_ids(idx, direction) == [ours, other.prog_id]  # ours first
        send_frames(veth, direction)
        assert natra_frames(obj, direction) == FRAMES
        assert other.count == FRAMES

        attach.attach_tcx(natra_loader().prog_fd(direction), idx, direction, pin)  # replace ours
        assert len(attach.tcx_prog_ids(idx, direction)) == 2
        attach.detach_tcx(pin)
        assert attach.tcx_prog_ids(idx, direction) == [other.prog_id]  # the neighbour stays
        send_frames(veth, direction)
        assert other.count == 2 * FRAMES
    finally:
        os.close(other_link)  # unpinned: closing detaches it
    assert attach.tcx_prog_ids(idx, direction) == []


def test_tcx_link_pin_failure_leaves_nothing(veth, tmp_path, natra_loader):
    """A link that cannot be pinned (not bpffs) is closed, hence detached."""
    obj = natra_loader()
    with pytest.raises(attach.AttachError) as info:
        attach.attach_tcx(obj.prog_fd(L.DIR_TO_POD), veth.host_ifindex, L.DIR_TO_POD, str(tmp_path / "link"))
    assert info.value.step.startswith("pin tcx egress link")
    assert attach.tcx_prog_ids(veth.host_ifindex, L.DIR_TO_POD) == []


@pytest.mark.parametrize("mode", ["tcx", "clsact", "auto"])
def test_attach_error_names_the_step_and_keeps_the_cause(bpffs, natra_loader, mode):
    missing = 0x7FFFFFF0  # no such ifindex
    obj = natra_loader()
    with pytest.raises(attach.AttachError) as info:
        attach.attach(obj.prog_fd(L.DIR_TO_POD), missing, L.DIR_TO_POD, mode=mode,
                      link_pin=os.path.join(bpffs, "link"), name="natra_to_pod")
    err = info.value
    assert f"egress to ifindex {missing}" in str(err)
    assert err.cause is not None and str(err.cause) in str(err)
    if mode != "clsact":
        assert err.step == f"attach tcx egress to ifindex {missing}"
        assert isinstance(err.cause, OSError) and err.cause.errno == errno.ENODEV


def test_auto_picks_tcx_on_this_kernel(veth, bpffs, natra_loader):
    obj = natra_loader()
    pin = os.path.join(bpffs, "link")
    done = attach.attach(obj.prog_fd(L.DIR_TO_POD), veth.host_ifindex, L.DIR_TO_POD, mode="auto",
                         link_pin=pin, name="natra_to_pod")
    assert done.mode == attach.MODE_TCX and done.tcx_error is None
    assert "clsact" not in qdiscs(veth.host_if)
    attach.detach_tcx(pin)


def test_unknown_mode_is_refused(natra_loader):
    with pytest.raises(attach.AttachError, match="unknown mode"):
        attach.attach(natra_loader().prog_fd(0), 1, 0, mode="xdp", link_pin="/nonexistent", name="x")


# ---- clsact ------------------------------------------------------------------------------

@directions
def test_clsact_attach_replace_detach(veth, natra_loader, direction):
    idx = veth.host_ifindex
    first, second = natra_loader(), natra_loader()
    name = L.PROG_NAMES[direction]

    assert attach.attach_clsact(first.prog_fd(direction), idx, direction, name) is True  # made the qdisc
    found = attach.clsact_filters(idx, direction)
    assert [(f.prio, f.handle, f.prog_id, f.name) for f in found] == [
        (attach.CLSACT_PRIO, attach.CLSACT_HANDLE, attach.prog_id(first.prog_fd(direction)), name)]
    assert attach.clsact_filters(idx, 1 - direction) == []
    send_frames(veth, direction)
    assert natra_frames(first, direction) == FRAMES

    assert attach.attach_clsact(second.prog_fd(direction), idx, direction, name) is False  # replace
    found = attach.clsact_filters(idx, direction)
    assert [f.prog_id for f in found] == [attach.prog_id(second.prog_fd(direction))]
    assert len(tc_filters(veth.host_if, direction)) == 1  # as `tc` sees it: no duplicate
    send_frames(veth, direction)
    assert natra_frames(first, direction) == FRAMES
    assert natra_frames(second, direction) == FRAMES

    # A stale program id (someone else replaced it) is left alone.
    assert attach.detach_clsact(idx, direction, prog_id=attach.prog_id(first.prog_fd(direction))) is False
    assert len(attach.clsact_filters(idx, direction)) == 1
    assert attach.detach_clsact(idx, direction, prog_id=attach.prog_id(second.prog_fd(direction)),
                                delete_qdisc=True) is True
    assert attach.clsact_filters(idx, direction) == []
    assert "clsact" not in qdiscs(veth.host_if)  # we made it and it is empty
    assert attach.detach_clsact(idx, direction) is False  # already gone



@directions
def test_clsact_neighbour_keeps_running_and_survives_our_removal(veth, natra_loader, counter, direction):
    """Another agent's filter on the same hook (and its qdisc) outlives Natra."""
    idx = veth.host_ifindex
    netns.run("tc", "qdisc", "add", "dev", veth.host_if, "clsact")
    other = counter()
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.tc("add-filter", "bpf", idx, 7, fd=other.prog_fd, name="nt3_counter",
               parent=attach.CLSACT_PARENT[direction], prio=FOREIGN_PRIO, protocol=attach.ETH_P_ALL,
               classid=1, direct_action=True)
    obj = natra_loader()
    assert attach.attach_clsact(obj.prog_fd(direction), idx, direction, L.PROG_NAMES[direction]) is False
    assert sorted(f.prio for f in attach.clsact_filters(idx, direction)) == [attach.CLSACT_PRIO, FOREIGN_PRIO]
    send_frames(veth, direction)
    assert natra_frames(obj, direction) == FRAMES
    assert other.count == FRAMES  # ours passed them on (TC_ACT_UNSPEC)

    assert attach.detach_clsact(idx, direction, delete_qdisc=True) is True
    assert [f.prio for f in attach.clsact_filters(idx, direction)] == [FOREIGN_PRIO]
    assert "clsact" in qdiscs(veth.host_if)  # not ours to delete
    send_frames(veth, direction)
    assert other.count == 2 * FRAMES


def test_clsact_refuses_a_device_whose_ffff_is_an_ingress_qdisc(veth, natra_loader):
    """The standard plugin's `ingress` qdisc holds ffff:: clsact cannot be added, and our
    filters must not go into the ingress qdisc's one block (egress would go unlimited).
    The attach says so, and leaves the ingress qdisc and its filter as they were."""
    idx = veth.host_ifindex
    netns.run("tc", "qdisc", "add", "dev", veth.host_if, "ingress")
    netns.run("tc", "filter", "add", "dev", veth.host_if, "parent", "ffff:", "prio", "9",
              "u32", "match", "u32", "0", "0", "classid", "1:1")
    obj = natra_loader()
    for direction in (L.DIR_TO_POD, L.DIR_FROM_POD):
        with pytest.raises(attach.AttachError, match="an ingress qdisc holds ffff:, clsact unavailable"):
            attach.attach_clsact(obj.prog_fd(direction), idx, direction, L.PROG_NAMES[direction])
    assert "qdisc ingress ffff:" in qdiscs(veth.host_if) and "clsact" not in qdiscs(veth.host_if)
    assert " u32 " in netns.run("tc", "filter", "show", "dev", veth.host_if, "parent", "ffff:")
    assert attach.detach_clsact(idx, L.DIR_FROM_POD, delete_qdisc=True) is False
    assert "qdisc ingress ffff:" in qdiscs(veth.host_if)  # never ours to delete


def test_the_clsact_path_imports_no_pyroute2(veth, natra_loader):
    """attachMode clsact (and the fallback on kernels without tcx) stays on the plugin's
    ADD path: it talks rtnetlink itself, so it never pays pyroute2's import."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from natra.kernel import attach\n"
        "from natra.kernel.loader import BpfObject\n"
        "from natra.kernel.params import to_config\n"
        f"obj = BpfObject.load([to_config(None)] * 2)\n"
        f"for d in (0, 1):\n"
        f"    attach.attach_clsact(obj.prog_fd(d), {veth.host_ifindex}, d, 'natra_probe')\n"
        f"    assert attach.our_clsact_filter({veth.host_ifindex}, d) is not None\n"
        f"    attach.detach_clsact({veth.host_ifindex}, d, delete_qdisc=True)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'numpy', 'scapy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "clsact" not in qdiscs(veth.host_if)


def test_clsact_qdisc_we_made_stays_while_others_use_it(veth, natra_loader):
    """We created clsact, then a neighbour added a (non-bpf) filter: the qdisc stays."""
    idx, direction = veth.host_ifindex, L.DIR_FROM_POD
    obj = natra_loader()
    assert attach.attach_clsact(obj.prog_fd(direction), idx, direction, "natra_from_pod") is True
    netns.run("tc", "filter", "add", "dev", veth.host_if, "egress", "prio", "9",
              "u32", "match", "u32", "0", "0", "classid", "1:1")
    assert attach.detach_clsact(idx, direction, delete_qdisc=True) is True
    assert "clsact" in qdiscs(veth.host_if)
    assert " u32 " in netns.run("tc", "filter", "show", "dev", veth.host_if, "egress")
