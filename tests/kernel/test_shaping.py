"""natra/kernel/shaping.py against the kernel: build, read back, drift, refuse, remove.

Each test makes its own veth pair (`nsh<hex>`), deleted in a `finally` with
every qdisc on it. End-to-end behaviour of the tree with the real program and
real TCP (conformance, fairness, retransmissions, mice latency) is tested
through the CNI chain in tests/kernel/test_shaping_e2e.py.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from netns import kernel_skip_reason

from natra.kernel import layout as L
from natra.kernel import qdisc, shaping
from natra.kernel.params import params_for

SKIP = kernel_skip_reason(tools=("ip",))
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP is not None, reason=str(SKIP))]
MTU = 1500


@contextlib.contextmanager
def _veth() -> Iterator[int]:
    name = f"nsh{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True,
                   capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True, timeout=10)
        yield qdisc.link_index(name)
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def veth() -> Iterator[int]:
    with _veth() as ifindex:
        yield ifindex


@pytest.mark.parametrize("rate", [8_000, 10**7, 10**9, 10**11])
def test_apply_builds_the_plan_and_is_idempotent(veth, rate):
    tree = shaping.plan(params_for(rate, mode="shape"), MTU)
    shaping.apply(veth, tree)
    first = [(c.classid, c.parent, c.htb) for c in qdisc.dump_classes(veth) if c.kind == "htb"]
    shaping.apply(veth, tree)
    again = [(c.classid, c.parent, c.htb) for c in qdisc.dump_classes(veth) if c.kind == "htb"]
    assert first == again and len(first) == len(tree.classes)
    assert shaping.drift(veth, tree) == []
    state = shaping.inspect(veth)
    assert state is not None and state.rate_bps == tree.rate_bps
    assert [c.minor for c in state.classes] == sorted(c.minor for c in tree.classes)
    root = qdisc.root_qdisc(veth)
    assert root.kind == "tbf" and root.handle == qdisc.handle(shaping.TBF_MAJOR)


def test_drift_names_what_changed(veth):
    tree = shaping.plan(params_for(10**8, mode="shape", classes=4), MTU)
    shaping.apply(veth, tree)
    heavy1 = qdisc.handle(shaping.QDISC_MAJOR, L.CLASS_HEAVY_BASE + 1)
    qdisc.delete_class(veth, heavy1)
    mice, root = (qdisc.handle(shaping.QDISC_MAJOR, m) for m in (L.CLASS_MICE, L.CLASS_ROOT))
    qdisc.replace_htb_class(veth, mice, root, 10**6, 10**6, 3028, 3028, 0, 3028)
    problems = shaping.drift(veth, tree)
    assert any("heavy1" in p and "missing" in p for p in problems)
    assert any(p.startswith("class mice has rate 1000000") for p in problems)
    shaping.apply(veth, tree)  # repairs
    assert shaping.drift(veth, tree) == []


def test_a_smaller_plan_drops_the_classes_it_no_longer_has(veth):
    shaping.apply(veth, shaping.plan(params_for(10**8, mode="shape", classes=8), MTU))
    smaller = shaping.plan(params_for(10**8, mode="shape", classes=2), MTU)
    shaping.apply(veth, smaller)
    assert shaping.drift(veth, smaller) == []


def test_a_foreign_root_qdisc_is_refused_and_left_alone(veth):
    qdisc.replace_htb_root(veth, 0x7, 1)
    tree = shaping.plan(params_for(10**7, mode="shape"), MTU)
    with pytest.raises(shaping.ShapeError, match="Natra did not make"):
        shaping.apply(veth, tree)
    assert shaping.remove(veth) is False
    root = qdisc.root_qdisc(veth)
    assert root.kind == "htb" and root.handle == qdisc.handle(0x7)
    assert shaping.drift(veth, tree)[0].endswith("not Natra's tbf 4e53:")


def test_remove_takes_the_whole_tree_and_is_harmless_twice(veth):
    shaping.apply(veth, shaping.plan(params_for(10**7, mode="shape"), MTU))
    assert shaping.remove(veth) is True
    assert shaping.remove(veth) is False
    assert shaping.inspect(veth) is None
    assert all(q.handle == 0 for q in qdisc.dump_qdiscs(veth))


def test_ifb_for_a_container_is_made_and_found_by_name():
    name = shaping.ifb_name(f"test-{secrets.token_hex(8)}")
    ifindex = qdisc.create_ifb(name)
    try:
        tree = shaping.plan(params_for(10**8, mode="shape"), MTU)
        shaping.apply(ifindex, tree)
        assert shaping.drift(ifindex, tree) == []
        assert qdisc.link_index(name) == ifindex
    finally:
        qdisc.delete_link(name)
    assert qdisc.delete_link(name) is False
