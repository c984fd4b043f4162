"""The node agent for real: a `natra agent` process, the plugin as its thin client, Debian's ptp.

Each test starts its own agent on a private socket (the plugin finds it through
NATRA_AGENT_SOCKET, which the chain passes as a runtime passes its environment),
drives namespace Pods through the real chain, and reads the kernel back through
natra.kernel.datapath.inspect. The agent's faults are real: absent (no socket),
restarting (SIGKILL leaves the socket file with nobody listening), wedged
(SIGSTOP: the kernel still queues connections, nobody answers) and restarted
while Pods are limited. The unprivileged caller is a real process with uid 65534.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import chain as C
import netns
import pytest

from natra.kernel import datapath, qdisc, shaping

SKIP_REASON = netns.kernel_skip_reason(node_bpffs=True, objects=("natra",), cni_plugins=("ptp",))
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

RATE = 20_000_000
ARGS = {"bandwidth": {"ingressRate": RATE, "ingressBurst": 4 * 1024**2, "egressRate": RATE,
                      "egressBurst": 4 * 1024**2}}
NOBODY = 65534


class AgentLab:
    """A bin dir, a private bpffs root, state and lock dirs, an agent process and Pods."""

    counter = 0

    def __init__(self):
        AgentLab.counter += 1
        self.tmp = tempfile.mkdtemp(prefix="nt4-agent-")
        os.chmod(self.tmp, 0o755)
        self.sock = os.path.join(self.tmp, "run", "agent.sock")
        self.root = f"/sys/fs/bpf/nt4-agent-{os.getpid()}-{AgentLab.counter}"
        self.bin_dir = C.make_bin_dir()
        self.agent: subprocess.Popen | None = None
        self.agent_log = os.path.join(self.tmp, "agent.log")
        self.pods: list[C.Pod] = []
        self.env = {"NATRA_AGENT_SOCKET": self.sock, "NATRA_LOCK_DIR": os.path.join(self.tmp, "lock")}
        self.cni_log = os.path.join(self.tmp, "cni.log")
        natra = C.natra_entry(bpffsRoot=self.root, stateDir=os.path.join(self.tmp, "state"),
                              logFile=self.cni_log)
        ptp = C.ptp(f"10.205.{AgentLab.counter}.0/24", os.path.join(self.tmp, "ipam"))
        self.chain = C.Chain({"cniVersion": "1.0.0", "name": f"nt4agent{AgentLab.counter}",
                              "plugins": [ptp, natra]}, self.bin_dir)
        self.chain.extra_env = dict(self.env)

    def start_agent(self, pool: int = 1, args: tuple[str, ...] = ()) -> None:
        started = self.log_text().count("listening on")
        with open(self.agent_log, "a") as log:
            self.agent = subprocess.Popen([sys.executable, "-m", "natra", "agent", "--socket", self.sock,
                                           "--pool", str(pool), "--bpffs-root", self.root, *args],
                                          stdout=log, stderr=log,
                                          env={**os.environ, **self.env, "PYTHONPATH": C.REPO})
        deadline = time.monotonic() + 20
        while self.log_text().count("listening on") == started:
            assert self.agent.poll() is None, self.log_text()
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGCONT)
            self.agent.send_signal(sig)
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None

    def log_text(self) -> str:
        try:
            with open(self.agent_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def pod(self, suffix: str) -> C.Pod:
        pod = C.make_pod(f"ag{AgentLab.counter}-{suffix}", capability_args=ARGS)
        self.pods.append(pod)
        return pod

    def add(self, pod: C.Pod) -> float:
        started = time.monotonic()
        calls = self.chain.add(pod)
        assert all(c.ok for c in calls), calls
        return time.monotonic() - started

    def close(self) -> None:
        self.stop_agent()
        for pod in self.pods:
            try:
                self.chain.delete(pod)
            finally:
                C.delete_netns(pod)
                try:
                    datapath.remove(pod.container_id, root=self.root)
                except Exception:  # noqa: BLE001 - best effort; rmtree below finishes it
                    pass
        shutil.rmtree(self.root, ignore_errors=True)
        C.remove_tree(self.bin_dir)
        C.remove_tree(self.tmp)


@pytest.fixture
def lab():
    made = AgentLab()
    try:
        yield made
    finally:
        made.close()


def limited(lab: AgentLab, pod: C.Pod) -> bool:
    found = datapath.inspect(pod.container_id, root=lab.root)
    return bool(found is not None and found.ok and all(h.attached for h in found.hooks.values())
                and len(found.hooks) == 2)


def ifb_exists(pod: C.Pod) -> bool:
    try:
        qdisc.link_index(shaping.ifb_name(pod.container_id))
        return True
    except qdisc.QdiscError:
        return False


def moved(lab: AgentLab, pod: C.Pod) -> bool:
    """The agent has logged the Pod's move to tcx (after its own program took the shared
    one's place, if it was bound to it)."""
    return any(line.startswith(f"natra agent: {pod.container_id}: ") and "moved to tcx, in" in line
               for line in lab.log_text().splitlines())


def eventually(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_calls_go_through_the_agent_and_leave_the_same_kernel_state(lab):
    lab.start_agent()
    pod = lab.pod("a")
    lab.add(pod)
    assert eventually(lambda: f"ADD {pod.container_id} exit 0" in lab.log_text())
    assert limited(lab, pod) and ifb_exists(pod)
    checks = lab.chain.check(pod)
    assert all(c.ok for c in checks), checks
    assert eventually(lambda: f"CHECK {pod.container_id} exit 0" in lab.log_text())
    calls = lab.chain.delete(pod)
    assert all(c.ok for c in calls), calls
    assert datapath.inspect(pod.container_id, root=lab.root) is None  # the pins go before the answer
    assert eventually(lambda: f"DEL {pod.container_id} exit 0" in lab.log_text())
    assert eventually(lambda: not ifb_exists(pod)), "the IFB outlived the agent's deferred teardown"


def test_a_second_pod_takes_a_program_the_pool_loaded_ahead(lab):
    lab.start_agent(pool=1)
    first, second = lab.pod("p1"), lab.pod("p2")
    lab.add(first)
    assert eventually(lambda: "programs ready: " in lab.log_text())
    time.sleep(1.0)  # the pool refills the shape the first Pod asked for
    lab.add(second)
    assert eventually(lambda: f"ADD {second.container_id} exit 0" in lab.log_text())
    assert limited(lab, second)


def test_absent_agent_the_plugin_does_the_call_itself(lab):
    assert not os.path.exists(lab.sock)
    pod = lab.pod("absent")
    lab.add(pod)
    assert limited(lab, pod)


def test_restarting_agent_refused_socket_falls_back_at_once(lab):
    lab.start_agent()
    lab.stop_agent(signal.SIGKILL)  # a killed agent leaves its socket file, nobody listens
    assert os.path.exists(lab.sock)
    pod = lab.pod("refused")
    took = lab.add(pod)
    assert limited(lab, pod)
    assert took < 2.5, f"ADD took {took:.2f} s although the socket refused at once"


def test_wedged_agent_the_client_waits_its_bound_then_does_it_itself(lab):
    lab.start_agent()
    lab.chain.extra_env["NATRA_AGENT_TIMEOUT_MS"] = "700"
    os.kill(lab.agent.pid, signal.SIGSTOP)  # the kernel still accepts connections into the backlog
    try:
        pod = lab.pod("wedged")
        took = lab.add(pod)
        assert took >= 0.7, f"ADD returned in {took:.2f} s, before the agent's bound"
        assert took < 0.7 + 10, took
        assert limited(lab, pod)
    finally:
        os.kill(lab.agent.pid, signal.SIGCONT)
    # Woken up, the agent finds the call's client gone and does not redo it.
    assert eventually(lambda: f"skipped ADD {pod.container_id}" in lab.log_text(), 10), lab.log_text()
    checks = lab.chain.check(pod)
    assert all(c.ok for c in checks), checks


def test_limits_survive_an_agent_restart(lab):
    lab.start_agent()
    pod = lab.pod("survive")
    lab.add(pod)
    before = datapath.inspect(pod.container_id, root=lab.root)
    lab.stop_agent(signal.SIGKILL)
    after = datapath.inspect(pod.container_id, root=lab.root)
    assert limited(lab, pod) and after.configs == before.configs and ifb_exists(pod)
    checks = lab.chain.check(pod)  # no agent: the plugin checks by itself
    assert all(c.ok for c in checks), checks
    lab.start_agent()
    checks = lab.chain.check(pod)
    assert all(c.ok for c in checks), checks
    assert eventually(lambda: f"CHECK {pod.container_id} exit 0" in lab.log_text())


def test_an_auto_add_is_answered_on_clsact_and_moved_to_tcx_once_calls_stop(lab):
    lab.start_agent()
    pod = lab.pod("move")
    lab.add(pod)
    assert eventually(lambda: moved(lab, pod)), lab.log_text()
    found = datapath.inspect(pod.container_id, root=lab.root)
    assert limited(lab, pod) and found.mode == "tcx" and found.meta["tcx_pending"] is False
    assert found.meta["requested_mode"] == "auto"
    assert "clsact" not in netns.run("tc", "qdisc", "show", "dev", found.host_ifname)
    with open(lab.cni_log) as f:
        assert "via clsact (tcx links follow the answer)" in f.read()
    checks = lab.chain.check(pod)
    assert all(c.ok for c in checks), checks


def test_a_restarted_agent_finishes_the_moves_the_last_one_left(lab):
    lab.start_agent(args=("--tcx-move-idle-ms", "600000"))  # this agent never gets to its moves
    pods = [lab.pod(f"left{i}") for i in range(2)]
    for pod in pods:
        lab.add(pod)
    for pod in pods:
        found = datapath.inspect(pod.container_id, root=lab.root)
        assert limited(lab, pod) and found.mode == "clsact" and found.meta["tcx_pending"] is True
    lab.stop_agent(signal.SIGKILL)
    assert all(limited(lab, pod) for pod in pods)
    checks = lab.chain.check(pods[0])  # no agent: the plugin checks the clsact filters itself
    assert all(c.ok for c in checks), checks
    lab.start_agent()
    assert "2 Pod(s) still to settle (own program, tcx)" in lab.log_text()
    assert eventually(lambda: all(moved(lab, p) for p in pods)), lab.log_text()
    for pod in pods:
        found = datapath.inspect(pod.container_id, root=lab.root)
        assert limited(lab, pod) and found.mode == "tcx" and found.meta["tcx_pending"] is False


def test_a_burst_beyond_the_ready_programs_is_bound_to_the_shared_program_then_settled(lab):
    """One ready object, two filled slots of the shared program: of three back-to-back ADDs
    at least two find no object ready and are bound to the shared program at once; once
    calls stop, each gets its own program, on tcx; CHECK passes throughout."""
    lab.start_agent(pool=1, args=("--shared-slots", "2", "--loaders", "1"))
    assert eventually(lambda: "shared interim program ready" in lab.log_text(), 20), lab.log_text()
    pods = [lab.pod(f"burst{i}") for i in range(3)]
    for pod in pods:
        lab.add(pod)
    bound = [p for p in pods if "interim" in datapath.inspect(p.container_id, root=lab.root).meta]
    assert eventually(lambda: all(moved(lab, p) for p in pods), 10), lab.log_text()
    assert eventually(lambda: all(
        "interim" not in datapath.inspect(p.container_id, root=lab.root).meta
        and datapath.inspect(p.container_id, root=lab.root).mode == "tcx" for p in pods), 10), lab.log_text()
    log = lab.log_text()
    assert len(bound) >= 2, log
    assert "on the shared program: 2)" in log or "on the shared program: 3)" in log, log
    for pod in bound:
        assert f"{pod.container_id}: own program in place of the shared one; moved to tcx" in log, log
    with open(lab.cni_log) as f:
        assert "(on the shared program until its own is verified)" in f.read()
    for pod in pods:
        assert limited(lab, pod)
        checks = lab.chain.check(pod)
        assert all(c.ok for c in checks), checks


def _connect_as(uid: int, path: str) -> str:
    """Connect and send a harmless call as `uid` in a child process; what happened."""
    code = (  # imports first: the interpreter may live where uid cannot read
        "import os, socket, sys\n"
        "from natra.cni import agentclient as a\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({path!r})\n"
        "except PermissionError:\n"
        "    print('EACCES'); sys.exit()\n"
        "try:\n"
        "    s.sendall(a.netstring(a.MAGIC) + a.netstring(str(2**62).encode())"
        " + a.netstring(b'CNI_COMMAND=VERSION') + a.netstring(b'{\"cniVersion\": \"1.0.0\"}'))\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "    print('REPLY' if s.recv(100) else 'CLOSED')\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print('CLOSED')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                         env={**os.environ, "PYTHONPATH": C.REPO}, cwd="/")
    return out.stdout.strip() or out.stderr.strip()


def test_an_unprivileged_process_cannot_reach_or_use_the_agent(lab):
    lab.start_agent()
    assert os.stat(lab.sock).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(lab.sock)).st_mode & 0o777 == 0o700
    assert _connect_as(NOBODY, lab.sock) == "EACCES"
    # Had someone opened the modes, the peer check still refuses a non-root caller.
    os.chmod(os.path.dirname(lab.sock), 0o755)
    os.chmod(lab.sock, 0o666)
    assert _connect_as(NOBODY, lab.sock) == "CLOSED"
    assert eventually(lambda: f"uid {NOBODY}: only uid 0 may run CNI calls" in lab.log_text())
    assert _connect_as(0, lab.sock) == "REPLY"


def test_agent_refuses_to_replace_a_file_that_is_not_a_socket(lab):
    os.makedirs(os.path.dirname(lab.sock), exist_ok=True)
    with open(lab.sock, "w") as f:
        f.write("not a socket")
    out = subprocess.run([sys.executable, "-m", "natra", "agent", "--socket", lab.sock], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "PYTHONPATH": C.REPO})
    assert out.returncode == 1 and "is not a socket" in out.stderr
    with open(lab.sock) as f:
        assert f.read() == "not a socket"


@pytest.mark.parametrize("args, message", [
    (["--pool", "-1"], "--pool must be >= 0"),
    (["--loaders", "0"], "--loaders must be >= 1"),
    (["--tcx-move-idle-ms", "-5"], "--tcx-move-idle-ms must be >= 0"),
    (["--shared-slots", "-1"], "--shared-slots must be >= 0"),
])
def test_agent_refuses_bad_counts(lab, args, message):
    out = subprocess.run([sys.executable, "-m", "natra", "agent", "--socket", lab.sock, *args],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": C.REPO})
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists(lab.sock)


def test_the_agent_loads_with_as_many_threads_as_asked_at_most_one_per_cpu(lab):
    from natra.node.agent import default_pool

    for asked in (1, 2, 64):
        objects = default_pool(1, asked)
        try:
            assert objects.loaders == min(asked, os.cpu_count() or 1)
        finally:
            objects.stop()
    lab.start_agent(pool=1)
    assert f"({min(2, os.cpu_count() or 1)} loading programs)" in lab.log_text()  # the default


def test_without_shared_slots_an_add_that_finds_no_program_ready_waits_for_the_verifier(lab):
    """--shared-slots 0: no shared program is loaded, the loaders keep the agent's priority,
    and a burst beyond the ready object is served by the verifier, as before."""
    from natra.node.agent import LOADER_NICE, default_pool

    objects = default_pool(1, 1, 0)
    try:
        assert objects.slots == 0 and objects.nice == 0
    finally:
        objects.stop()
    objects = default_pool(1, 1)
    try:
        assert objects.slots > 0 and objects.nice == LOADER_NICE
    finally:
        objects.stop()
    lab.start_agent(pool=1, args=("--shared-slots", "0"))
    pods = [lab.pod(f"noshared{i}") for i in range(2)]
    for pod in pods:
        lab.add(pod)
    assert eventually(lambda: all(moved(lab, p) for p in pods), 10), lab.log_text()
    for pod in pods:
        assert "interim" not in datapath.inspect(pod.container_id, root=lab.root).meta
    log = lab.log_text()
    assert "shared interim program ready" not in log and "on the shared program: 0)" in log, log


def test_socket_pair_reports_peer_uid():
    from natra.node.agent import peer_uid

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == (os.getpid(), os.getuid())
