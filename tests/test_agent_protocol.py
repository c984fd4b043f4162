"""The agent's protocol, its refusals and the per-container lock, without root.

The agent here is the real natra.node.agent.Agent on a socket in a temporary
directory, serving the one CNI command that needs no kernel (VERSION), with the
caller's own uid allowed; tests/kernel/test_agent.py runs it as a node does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from natra.cni import agentclient as client
from natra.cni import serial
from natra.node import agent as server


def test_netstrings_round_trip_and_refuse_what_is_malformed():
    for payload in (b"", b"x", b"a:b,c", bytes(range(256))):
        data = client.netstring(payload) + client.netstring(b"next")
        first, at = client.read_netstring(data, 0)
        second, end = client.read_netstring(data, at)
        assert (first, second, end) == (payload, b"next", len(data))
    for bad in (b"5:abc,", b"3:abc;", b"x:abc,", b"-1:,", b"3abc,", b"99999999999999:"):
        with pytest.raises(ValueError):
            client.read_netstring(bad, 0)
    with pytest.raises(ValueError):
        client.read_netstring(client.netstring(b"abcdef"), 0, limit=5)


def test_only_cni_and_natra_variables_are_forwarded():
    env = {"CNI_COMMAND": "ADD", "NATRA_LOG_FILE": "/x", "PATH": "/bin", "HOME": "/root",
           "CNI_ARGS": "a=b;c=d"}
    block = client.encode_env(env)
    assert sorted(block.split(b"\0")) == [b"CNI_ARGS=a=b;c=d", b"CNI_COMMAND=ADD", b"NATRA_LOG_FILE=/x"]


def test_no_agent_means_run_it_yourself(tmp_path):
    assert client.forward({client.SOCKET_ENV: str(tmp_path / "missing.sock")}, b"{}") is None
    assert client.forward({client.SOCKET_ENV: "off"}, b"{}") is None
    assert client.socket_path({}) == client.DEFAULT_SOCKET


def test_a_socket_nobody_answers_is_given_up_within_the_bound(tmp_path):
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(path)
        silent.listen(4)  # accepts into the backlog, never answers: a wedged agent
        started = time.monotonic()
        got = client.forward({client.SOCKET_ENV: path, client.TIMEOUT_ENV: "300"}, b"{}")
        took = time.monotonic() - started
    assert got is None
    assert 0.29 <= took < 3, took


def test_parse_request_refuses_a_foreign_protocol_and_foreign_variables():
    good = (client.netstring(client.MAGIC) + client.netstring(b"123") + client.netstring(b"CNI_COMMAND=ADD")
            + client.netstring(b"{}"))
    assert server.parse_request(good) == (123, {"CNI_COMMAND": "ADD"}, b"{}")
    with pytest.raises(ValueError, match="protocol"):
        server.parse_request(client.netstring(b"http/1.1") + good)
    bad_env = (client.netstring(client.MAGIC) + client.netstring(b"1") + client.netstring(b"LD_PRELOAD=/x.so")
               + client.netstring(b"{}"))
    with pytest.raises(ValueError, match="not a forwarded variable"):
        server.parse_request(bad_env)


@pytest.fixture
def running_agent(tmp_path):
    lines: list[str] = []
    agent = server.Agent(str(tmp_path / "run" / "agent.sock"), log=lines.append, allowed_uid=os.getuid())
    agent.start()
    thread = threading.Thread(target=agent.serve, daemon=True)
    thread.start()
    try:
        yield agent, lines
    finally:
        agent.stop()
        thread.join(5)


def test_the_agent_runs_a_call_as_the_plugin_would(running_agent, tmp_path):
    agent, lines = running_agent
    env = {client.SOCKET_ENV: agent.path, "CNI_COMMAND": "VERSION", "NATRA_LOCK_DIR": str(tmp_path / "lock")}
    code, out, err = client.forward(env, json.dumps({"cniVersion": "1.0.0"}).encode())
    assert code == 0 and "1.1.0" in json.loads(out)["supportedVersions"]
    assert agent.served == 1
    assert os.stat(agent.path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(agent.path)).st_mode & 0o777 == 0o700


def test_the_agent_does_not_start_a_call_whose_client_gave_up(running_agent):
    agent, lines = running_agent
    stale = (client.netstring(client.MAGIC) + client.netstring(str(time.monotonic_ns() - 1).encode())
             + client.netstring(b"CNI_COMMAND=VERSION") + client.netstring(b"{}"))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(agent.path)
        s.sendall(stale)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
    assert agent.expired == 1 and agent.served == 0
    assert any("stopped waiting" in line for line in lines)


def test_the_agent_refuses_callers_of_another_uid(tmp_path):
    lines: list[str] = []
    agent = server.Agent(str(tmp_path / "agent.sock"), log=lines.append, allowed_uid=os.getuid() + 1)
    agent.start()
    thread = threading.Thread(target=agent.serve, daemon=True)
    thread.start()
    try:
        assert client.forward({client.SOCKET_ENV: agent.path, "CNI_COMMAND": "VERSION"}, b"{}") is None
        assert agent.refused == 1 and agent.served == 0
        assert any(f"only uid {os.getuid() + 1} may run CNI calls" in line for line in lines)
    finally:
        agent.stop()
        thread.join(5)


def test_the_container_lock_excludes_a_second_caller_until_its_bound(tmp_path):
    env = {"CNI_CONTAINERID": "c0ffee", "CNI_COMMAND": "ADD", serial.LOCK_DIR_ENV: str(tmp_path)}
    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    with serial.hold(env) as first:
        assert first
        with serial.hold(env, timeout_s=0.05, clock=lambda: now[0], sleep=sleep) as second:
            assert not second
        assert 0.05 <= sum(waits) < 0.05 + 2 * serial.POLL_S
    with serial.hold(env) as again:
        assert again
    assert os.path.exists(tmp_path / "c0ffee")
    with serial.hold({**env, "CNI_COMMAND": "DEL"}) as held:
        assert held
    assert not os.path.exists(tmp_path / "c0ffee")  # DEL leaves no lock file behind
    for bad in ("", "../x", "a/b", ".."):
        with serial.hold({**env, "CNI_CONTAINERID": bad}) as held:
            assert not held


def test_the_cni_path_imports_nothing_heavy_before_asking_the_agent():
    code = ("import sys, natra.cli, natra.cni.agentclient\n"
            "print(' '.join(m for m in ('argparse', 'dataclasses', 'json', 'ctypes', 'natra.cni.plugin',"
            " 'natra.kernel', 'pyroute2', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert out.stdout.strip() == ""


def test_cli_and_plugin_agree_on_the_largest_stdin():
    from natra import cli
    from natra.cni import request

    assert cli.MAX_STDIN_BYTES == request.MAX_STDIN_BYTES
    assert server.MAX_REQUEST_BYTES == request.MAX_STDIN_BYTES + 1


@pytest.mark.parametrize("what", ["missing", "plain file"])
def test_a_namespace_the_agent_cannot_see_is_left_to_the_plugin(running_agent, tmp_path, what):
    """Missing, or an empty file where the runtime's mount did not reach the agent's mount
    namespace (setns would fail there and the agent would fail the Pod open)."""
    agent, lines = running_agent
    netns = tmp_path / "cni-1234"
    if what == "plain file":
        netns.write_bytes(b"")
    env = {client.SOCKET_ENV: agent.path, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
           "CNI_NETNS": str(netns), "CNI_IFNAME": "eth0"}
    started = time.monotonic()
    assert client.forward(env, b"{}") is None
    assert time.monotonic() - started < 1
    assert agent.served == 0
    assert any("is left to the plugin" in line for line in lines)


def test_the_wait_for_the_agent_is_bounded_and_longer_for_gc():
    assert client.timeout_s({}) == client.DEFAULT_TIMEOUT_MS / 1000
    assert client.timeout_s({client.TIMEOUT_ENV: "250"}) == 0.25
    assert client.timeout_s({client.TIMEOUT_ENV: "nonsense"}) == client.DEFAULT_TIMEOUT_MS / 1000
    assert client.timeout_s({client.TIMEOUT_ENV: "-5"}) == 0.001
    assert client.timeout_s({client.TIMEOUT_ENV: "250", "CNI_COMMAND": "GC"}) == 2.5


def test_an_add_that_fails_open_in_the_agent_is_handed_back_to_the_plugin(running_agent, tmp_path):
    """The agent is never worse than the plugin alone: whatever made the ADD fail open there
    may be the agent's own view of the node, so the plugin gets to try itself."""
    agent, lines = running_agent
    config = {"cniVersion": "1.0.0", "name": "n", "type": "natra", "logFile": "",
              "stateDir": str(tmp_path / "state"), "bpffsRoot": str(tmp_path / "pins"),
              "runtimeConfig": {"bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 1_000_000}},
              "prevResult": {"cniVersion": "1.0.0", "ips": [],
                             "interfaces": [{"name": "ntzzhost0"},
                                            {"name": "ntzz0", "sandbox": "/proc/self/ns/net"}]}}
    env = {client.SOCKET_ENV: agent.path, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee1",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "ntzz0", "CNI_PATH": "/opt/cni/bin",
           "NATRA_LOCK_DIR": str(tmp_path / "lock")}
    assert client.forward(env, json.dumps(config).encode()) is None
    assert (agent.handed_back, agent.served) == (1, 0)
    assert any("failed open here; left to the plugin to try itself" in line for line in lines)
