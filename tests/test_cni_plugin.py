"""The plugin end to end through run(env, stdin), without root or a kernel.

What needs the kernel (a real attach, CHECK of real state, STATUS on bpffs)
is in tests/kernel/test_cni_chain.py; the executor's decisions on those paths
are also in tests/test_cni_executor.py, against a fake data path. Here every
path that needs neither: every
command and version, protocol errors with their codes, fail-open on causes
that need no privilege (a Pod netns that does not exist), logging rules.
"""

import io
import json
import os

import pytest

from natra.cni import versions
from natra.cni.plugin import run

MAXU32 = 2**32 - 1
NOW = 1_700_000_000 * 10**9
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1234", "mac": "aa:aa:aa:aa:aa:aa"},
                   {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/nt4-none"}],
    "ips": [{"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}
CONTAINERD = {"bandwidth": {"IngressRate": 10_000_000, "IngressBurst": MAXU32,
                            "EgressRate": 10_000_000, "EgressBurst": MAXU32}}
CRIO = {"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 4 * 1024**3 - 1}}


@pytest.fixture
def where(tmp_path):
    """Private locations: a non-bpffs 'bpffs root', state dir and log file under tmp."""
    return {"NATRA_BPFFS_ROOT": str(tmp_path / "bpf"), "NATRA_STATE_DIR": str(tmp_path / "state"),
            "NATRA_LOG_FILE": str(tmp_path / "log" / "cni.log")}


def call(command, where, version="1.0.0", prev=PREV, env=None, stdin=None, **config):
    body = {"cniVersion": version, "name": "net", "type": "natra", **config}
    if prev is not None:
        body["prevResult"] = versions.convert_result(prev, version)
    full_env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "nt4-c1", "CNI_NETNS": "/run/netns/nt4-none",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
                "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=ns;IgnoreUnknown=1", **where, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    err = io.StringIO()
    code, out = run(full_env, json.dumps(body).encode() if stdin is None else stdin, now=NOW, stderr=err)
    text = out.decode()
    return code, (json.loads(text) if text.strip() else None), err.getvalue()


def assert_error(code, out, expected_code, version="1.0.0"):
    assert code != 0
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    assert out["code"] == expected_code and out["cniVersion"] == version
    assert out["msg"]


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
def test_version_command(version, where):
    code, out, _ = call("VERSION", where, version=version, prev=None)
    assert code == 0
    assert out == {"cniVersion": version, "supportedVersions": list(versions.SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
def test_add_without_limits_passes_the_result_through(version, where):
    code, out, err = call("ADD", where, version=version)
    assert code == 0
    assert out == versions.convert_result(PREV, version)
    assert ("version" in out["ips"][0]) == (version < "1.0.0")
    assert "no bandwidth limits" in err


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
def test_add_without_limits_or_prev_result(version, where):
    code, out, _ = call("ADD", where, version=version, prev=None)
    assert (code, out) == (0, {"cniVersion": version})


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
@pytest.mark.parametrize("runtime", [CONTAINERD, CRIO], ids=["containerd", "crio"])
def test_add_fails_open_when_the_pod_netns_is_gone(version, runtime, where):
    code, out, err = call("ADD", where, version=version, runtimeConfig=runtime)
    assert code == 0
    assert out == versions.convert_result(PREV, version)
    assert "failed open" in err and "peer check" in err and "nt4-none" in err
    if version >= "0.4.0":  # CRI-O calls CHECK right after ADD: it must pass after a fail-open
        code, out, err = call("CHECK", where, version=version, runtimeConfig=runtime)
        assert (code, out) == (0, None), err
    code, out, _ = call("DEL", where, version=version, runtimeConfig=runtime)
    assert (code, out) == (0, None)


def test_add_with_limits_and_no_prev_result_is_an_error(where):
    code, out, _ = call("ADD", where, prev=None, runtimeConfig=CONTAINERD)
    assert_error(code, out, 7)
    assert "chained" in out["msg"] and "prevResult" in out["details"]


def test_half_specified_limit_uses_upstream_message(where):
    code, out, _ = call("ADD", where, runtimeConfig={"bandwidth": {"ingressRate": 1000}})
    assert_error(code, out, 7)
    assert out["msg"] == "if rate is set, burst must also be set"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_without_limits_passes(version, where):
    assert call("CHECK", where, version=version)[:2] == (0, None)


def test_check_reports_missing_state(where):
    code, out, _ = call("CHECK", where, runtimeConfig=CONTAINERD)
    assert_error(code, out, 100)
    assert "nt4-c1" in out["details"]


@pytest.mark.parametrize("netns", [None, "/run/netns/nt4-none"])
def test_del_always_succeeds(netns, where):
    for prev in (PREV, None):
        code, out, _ = call("DEL", where, prev=prev, env={"CNI_NETNS": netns}, runtimeConfig=CONTAINERD)
        assert (code, out) == (0, None)


def test_status_fails_with_50_without_bpffs(where):
    code, out, _ = call("STATUS", where, version="1.1.0", prev=None)
    assert_error(code, out, 50, "1.1.0")
    assert "bpffs" in out["details"]


def test_status_reports_a_missing_object(where, tmp_path):
    code, out, _ = call("STATUS", where, version="1.1.0", prev=None, objectPath=str(tmp_path / "no.o"))
    assert_error(code, out, 50, "1.1.0")
    assert "no.o" in out["details"]


def test_gc_with_nothing_installed(where):
    code, out, _ = call("GC", where, version="1.1.0", prev=None, **{"cni.dev/valid-attachments": []})
    assert (code, out) == (0, None)


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_need_1_1_0(command, where):
    code, out, _ = call(command, where, version="1.0.0", prev=None)
    assert_error(code, out, 1)


@pytest.mark.parametrize("stdin, expected", [(b"{not json", 6), (b"[1]", 6), (b"x" * (4 * 2**20 + 1), 6),
                                             (b'{"cniVersion": "0.2.0"}', 1), (b'{"name": "n"}', 1)])
def test_protocol_errors_on_stdin(stdin, expected, where):
    code, out, _ = call("ADD", where, stdin=stdin)
    assert_error(code, out, expected, "1.1.0")


@pytest.mark.parametrize("env, expected", [({"CNI_NETNS": None}, 4), ({"CNI_CONTAINERID": None}, 4),
                                           ({"CNI_CONTAINERID": "-bad"}, 4), ({"CNI_IFNAME": "eth0:1"}, 4),
                                           ({"CNI_COMMAND": "FROB"}, 4), ({"CNI_PATH": None}, 4)])
def test_protocol_errors_on_env(env, expected, where):
    code, out, _ = call("ADD", where, env=env)
    assert_error(code, out, expected)
    assert out["details"] or out["msg"]


def test_error_carries_the_request_version(where):
    code, out, _ = call("ADD", where, version="0.3.1", env={"CNI_IFNAME": "a/b"})
    assert_error(code, out, 4, "0.3.1")


def test_bad_cluster_setting_is_invalid_config(where):
    code, out, _ = call("ADD", where, width=1000, runtimeConfig=CONTAINERD)
    assert_error(code, out, 7)
    assert "width" in out["details"]


def test_malformed_natra_annotation_is_logged_not_an_error(where):
    runtime = {**CONTAINERD, "io.kubernetes.cri.pod-annotations": {"natra.io/depth": "deep"}}
    code, out, err = call("ADD", where, runtimeConfig=runtime)
    assert code == 0 and out == PREV
    assert "malformed Natra annotation" in err and "natra.io/depth='deep'" in err


def test_annotation_values_other_than_natra_are_never_logged(where):
    secret = "s3cr3t-token-value"
    runtime = {**CONTAINERD, "io.kubernetes.cri.pod-annotations": {
        "example.com/token": secret, "kubernetes.io/egress-bandwidth": secret}}
    code, _, err = call("ADD", where, runtimeConfig=runtime)
    assert code == 0
    with open(where["NATRA_LOG_FILE"]) as f:
        logged = f.read()
    assert logged and secret not in logged and secret not in err


def test_unwritable_log_never_fails_the_plugin(where):
    code, out, err = call("ADD", {**where, "NATRA_LOG_FILE": "/proc/nt4-no/such/dir.log"})
    assert (code, out) == (0, PREV)
    assert "no bandwidth limits" in err


def test_each_call_logs_one_line(where):
    call("DEL", where)
    call("VERSION", where, prev=None)
    call("ADD", where, env={"CNI_IFNAME": ""})
    with open(where["NATRA_LOG_FILE"]) as f:
        lines = f.read().splitlines()
    assert len(lines) == 2  # VERSION is silent
    assert "DEL nt4-c1 ns/web: DEL: removed" in lines[0]
    assert "error 4" in lines[1]
    assert os.path.getsize(where["NATRA_LOG_FILE"]) < 1000


def test_del_succeeds_even_with_an_invalid_config(where):
    code, out, err = call("DEL", where, width=3, attachMode="xdp",
                          runtimeConfig={"bandwidth": {"ingressRate": 1}})
    assert (code, out) == (0, None)
    assert "invalid config" in err
