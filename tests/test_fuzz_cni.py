"""Bad input, generated: every CNI call ends in a result or a spec-shaped error.

Owns: Hypothesis strategies over everything a runtime (or an attacker who
controls a Pod's annotations) can hand the plugin: stdin bytes and JSON,
the CNI_* environment, CNI_ARGS, bandwidth quantities, natra.io/ annotations
and the extended JSON form. Each input is run through `natra.cni.plugin.run`
in-process and judged by `judge`, one oracle for all of them:
  - the exit code is 0 or 1 and stdout is one JSON document (or empty where
    the spec says so); an error has cniVersion, an integer code from the
    errors table and a non-empty msg;
  - DEL of an understood request always succeeds; ADD with a valid config
    fails open (exit 0, prevResult unchanged) whatever the annotations say;
  - nothing half-made stays behind: the "bpffs root" (a plain directory, so
    no call can reach the kernel's pins) is empty after every call;
  - no annotation value outside natra.io/ reaches stderr or the log file;
  - no call takes longer than CALL_DEADLINE_MS.
Rule: no root, no kernel state: every location the plugin writes (pins, state,
log) is a temporary directory, set both in the environment and, where the
input fuzzes the config, forced back into it; CNI_NETNS never names a real
namespace. Inputs that once found bugs have their own regression tests at
the end (deep nesting, overflowing durations, huge digit counts).
Must not know: the kernel; how the plugin is split into modules beyond
plugin.run and the public tables (errors.Kind, request.REQUIRED_ENV).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import string
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natra.cni import versions
from natra.cni.errors import Kind
from natra.cni.plugin import run
from natra.cni.request import MAX_STDIN_BYTES, REQUIRED_ENV

NOW = 1_700_000_000 * 10**9
CALL_DEADLINE_MS = 2000  # one in-process call takes ~1 ms; seconds mean a hang
ERROR_CODES = frozenset(k.value for k in Kind)
COMMANDS = tuple(REQUIRED_ENV)
SECRET = "s3cr3t-Do-Not-Log-7f1c"  # value of a foreign annotation; must never be logged
ANNOTATIONS_CAP = "io.kubernetes.cri.pod-annotations"
# Examples per test: the sum is the number of generated inputs CI runs (>= 5,000).
EXAMPLES = {"stdin_bytes": 900, "stdin_json": 700, "env": 900, "cni_args": 500, "config": 1100,
            "annotations": 1000, "quantities": 900}
assert sum(EXAMPLES.values()) >= 5000

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth0nt9", "mac": "aa:aa:aa:aa:aa:aa"},
                   {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/nt9-none"}],
    "ips": [{"interface": 1, "address": "10.219.0.5/24", "gateway": "10.219.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
}
LIMIT = {"ingressRate": 10_000_000, "ingressBurst": 10_000_000}


# ---- the oracle -----------------------------------------------------------------------

class Where:
    """Private locations for one example: pins (a plain dir, never bpffs), state, log."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="nt9-fuzz-")
        self.root = os.path.join(self.base, "bpf")
        self.state = os.path.join(self.base, "state")
        self.log = os.path.join(self.base, "log", "cni.log")
        os.mkdir(self.root)

    def env(self) -> dict[str, str]:
        return {"NATRA_BPFFS_ROOT": self.root, "NATRA_STATE_DIR": self.state, "NATRA_LOG_FILE": self.log}

    def force(self, config: dict) -> dict:
        """The config with its location keys pointing here (non-strings are fuzz, kept)."""
        out = dict(config)
        for key, value in (("bpffsRoot", self.root), ("stateDir", self.state), ("logFile", self.log),
                           ("objectPath", os.path.join(self.base, "none.bpf.o"))):
            if key in out and isinstance(out[key], str):
                out[key] = value
        return out

    def log_text(self) -> str:
        text = ""
        for name in (self.log, self.log + ".1"):
            try:
                with open(name, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def base_env(command: str, where: Where, **extra) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "nt9-fuzz-c1", "CNI_NETNS": "/run/netns/nt9-none",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;IgnoreUnknown=1", **where.env()}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def judge(env: dict[str, str], stdin: bytes, where: Where, *,
          must_succeed: bool = False) -> tuple[int, object]:
    """Run one call and check everything every call must satisfy; returns (code, parsed stdout)."""
    err = io.StringIO()
    started = time.monotonic()
    code, out = run(env, stdin, now=NOW, stderr=err)
    took_ms = (time.monotonic() - started) * 1000
    assert took_ms < CALL_DEADLINE_MS, f"call took {took_ms:.0f} ms"
    assert code in (0, 1)
    assert isinstance(out, bytes)
    text = out.decode("utf-8")
    assert text.count("\n") <= 1 and (not text or text.endswith("\n")), text
    parsed = json.loads(text) if text.strip() else None
    command = env.get("CNI_COMMAND")
    if code == 1:
        assert isinstance(parsed, dict), text
        assert isinstance(parsed.get("code"), int) and parsed["code"] in ERROR_CODES, parsed
        assert isinstance(parsed.get("msg"), str) and parsed["msg"], parsed
        assert parsed.get("cniVersion") in versions.SUPPORTED_VERSIONS, parsed
        assert not must_succeed, f"{command} must succeed: {parsed}"
    elif command == "ADD":
        assert isinstance(parsed, dict) and parsed.get("cniVersion") in versions.SUPPORTED_VERSIONS, text
    elif command == "VERSION":
        assert parsed["supportedVersions"] == list(versions.SUPPORTED_VERSIONS)
    else:
        assert parsed is None, text  # DEL, CHECK, STATUS, GC print nothing on success
    assert os.listdir(where.root) == [], "partial state left in the pin root"
    logged = err.getvalue() + where.log_text()
    assert SECRET not in logged, "a foreign annotation value reached the log"
    return code, parsed


def fuzz_settings(name: str) -> settings:
    return settings(max_examples=EXAMPLES[name], deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


@pytest.fixture
def where():
    """Private locations for the named tests (the generated ones make one per example)."""
    made = Where()
    try:
        yield made
    finally:
        made.close()


def with_where(fn):
    """Run fn(where) with fresh private locations, removed afterwards."""
    where = Where()
    try:
        return fn(where)
    finally:
        where.close()


# ---- strategies -----------------------------------------------------------------------

VERSION_TEXT = st.one_of(st.sampled_from(versions.SUPPORTED_VERSIONS + ("0.1.0", "0.2.0", "1.2.0", "", "1")),
                         st.text(max_size=8))
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
JSON_ANY = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
NAMEISH = st.text(alphabet=string.ascii_letters + string.digits + "_.-/:; \t\n\x00é", max_size=24)

QUANTITY_TEXT = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,12}(\.[0-9]{0,6})?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,4})?\Z"),
    st.sampled_from(["10M", "1k", "999", "1P", "1001T", "10K", "10MiB", " 10M", "1e3", "1E15", "1e16",
                     "0", "-5M", ".5k", "1.", "+1G", "1e1001", "0x10", "", "NaN", "inf"]),
    st.text(max_size=12))
COUNT_VALUE = st.one_of(st.integers(-10, 2**40), QUANTITY_TEXT, st.booleans(), st.none(), st.floats(),
                        st.sampled_from([1, 2, 4, 64, 1024, 65536, 131072, 3, "64Ki", "1Mi", "auto"]))
DURATION_VALUE = st.one_of(
    st.from_regex(r"\A([0-9]{1,6}(\.[0-9]{0,3})?(ns|us|µs|ms|s|m|h)){1,3}\Z"),
    st.sampled_from(["100ms", "1s", "0s", "61s", "1m30s", "1.5s", ".5s", "1", "ms", "-1s", "1d"]),
    st.integers(-10, 10**12), st.text(max_size=10))
KNOB_VALUES = {"width": COUNT_VALUE, "depth": COUNT_VALUE, "threshold": COUNT_VALUE,
               "window": DURATION_VALUE, "maxBurstTime": DURATION_VALUE, "reserve": COUNT_VALUE,
               "ecn": st.one_of(st.booleans(), st.sampled_from(["true", "FALSE", "yes"]), JSON_SCALAR),
               "flowTable": COUNT_VALUE}
ANNOTATION_FOR = {"width": "natra.io/width", "depth": "natra.io/depth", "threshold": "natra.io/threshold",
                  "window": "natra.io/window", "maxBurstTime": "natra.io/max-burst-time",
                  "reserve": "natra.io/reserve", "ecn": "natra.io/ecn", "flowTable": "natra.io/flow-table"}


@st.composite
def extended_form(draw) -> str:
    """Natra's extended JSON form of kubernetes.io/*-bandwidth, valid or not."""
    form = {}
    if draw(st.booleans()):
        form["rate"] = draw(st.one_of(QUANTITY_TEXT, JSON_SCALAR))
    if draw(st.booleans()):
        form["burst"] = draw(st.one_of(QUANTITY_TEXT, JSON_SCALAR))
    if draw(st.booleans()):
        form["cms"] = draw(st.one_of(
            st.fixed_dictionaries({}, optional={
                "width": st.one_of(st.integers(-2, 2**20), JSON_SCALAR),
                "depth": st.one_of(st.integers(-2, 20), JSON_SCALAR),
                "heavyHitterThreshold": st.one_of(st.integers(-2, 2**40), JSON_SCALAR),
                "bogus": JSON_SCALAR}),
            JSON_ANY))
    if draw(st.integers(0, 9)) == 0:
        form["other"] = draw(JSON_SCALAR)
    text = json.dumps(form)
    return draw(st.sampled_from([text, " " + text, text[:max(1, len(text) // 2)]]))


BANDWIDTH_ANNOTATION = st.one_of(QUANTITY_TEXT, extended_form(), JSON_SCALAR)


@st.composite
def pod_annotations(draw) -> dict:
    annotations = {"example.com/token": SECRET}
    for key in draw(st.lists(st.sampled_from(sorted(ANNOTATION_FOR)), unique=True, max_size=4)):
        annotations[ANNOTATION_FOR[key]] = draw(st.one_of(KNOB_VALUES[key], JSON_SCALAR))
    if draw(st.booleans()):
        annotations["natra.io/" + draw(st.text(string.ascii_lowercase + "-", max_size=8))] = draw(JSON_SCALAR)
    for key in ("kubernetes.io/ingress-bandwidth", "kubernetes.io/egress-bandwidth"):
        if draw(st.booleans()):
            annotations[key] = draw(BANDWIDTH_ANNOTATION)
    return annotations


def case_variants(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key, key[0].upper() + key[1:], key.lower(), key.upper(),
                            key.replace("Rate", "rate"), key + "x"])


@st.composite
def bandwidth_entry(draw) -> dict:
    entry = {}
    for key in ("ingressRate", "ingressBurst", "egressRate", "egressBurst"):
        if draw(st.booleans()):
            entry[draw(case_variants(key))] = draw(st.one_of(
                st.integers(-1, 2**64), st.sampled_from([0, 1000, 10_000_000, 2**32 - 1, 2**35]),
                JSON_SCALAR))
    return entry


@st.composite
def prev_result(draw):
    return draw(st.one_of(
        st.just(PREV), st.none(), JSON_SCALAR,
        st.fixed_dictionaries({}, optional={"cniVersion": VERSION_TEXT, "interfaces": st.one_of(
            st.lists(st.one_of(st.fixed_dictionaries({"name": NAMEISH}, optional={"sandbox": JSON_SCALAR}),
                               JSON_SCALAR), max_size=4), JSON_SCALAR),
            "ips": st.one_of(st.lists(st.one_of(st.fixed_dictionaries(
                {"address": st.one_of(st.sampled_from(["10.219.0.5/24", "fd00::5/64", "bad"]), JSON_SCALAR)}),
                JSON_SCALAR), max_size=3), JSON_SCALAR)})))


@st.composite
def network_config(draw, where: Where) -> dict:
    """A plugin config a runtime (or a broken conflist) might send."""
    config = {"cniVersion": draw(VERSION_TEXT), "name": "net", "type": "natra"}
    prev = draw(prev_result())
    if prev is not None:
        config["prevResult"] = prev
    runtime = {}
    if draw(st.booleans()):
        runtime[draw(st.sampled_from(["bandwidth", "Bandwidth", "bandWidth", "BANDWIDTH"]))] = draw(
            st.one_of(bandwidth_entry(), JSON_SCALAR))
    if draw(st.booleans()):
        runtime[ANNOTATIONS_CAP] = draw(st.one_of(pod_annotations(), JSON_SCALAR))
    if runtime or draw(st.booleans()):
        config["runtimeConfig"] = draw(st.one_of(st.just(runtime), JSON_SCALAR))
    if draw(st.integers(0, 3)) == 0:
        config.update(draw(bandwidth_entry()))
    for key in draw(st.lists(st.sampled_from(sorted(KNOB_VALUES)), unique=True, max_size=3)):
        config[key] = draw(KNOB_VALUES[key])
    if draw(st.integers(0, 3)) == 0:
        config["attachMode"] = draw(st.one_of(st.sampled_from(["auto", "tcx", "clsact", "TCX"]), JSON_SCALAR))
    if draw(st.integers(0, 4)) == 0:
        config["logMaxBytes"] = draw(COUNT_VALUE)
    for key in ("bpffsRoot", "stateDir", "logFile", "objectPath"):
        if draw(st.integers(0, 5)) == 0:
            config[key] = draw(st.one_of(st.text(max_size=5), JSON_SCALAR))
    if draw(st.integers(0, 3)) == 0:
        config[draw(st.sampled_from(["cni.dev/valid-attachments", "cni.dev/attachments"]))] = draw(st.one_of(
            st.lists(st.one_of(st.fixed_dictionaries({"containerID": NAMEISH, "ifname": NAMEISH}),
                               JSON_SCALAR), max_size=3), JSON_SCALAR))
    if draw(st.integers(0, 4)) == 0:
        config.update(draw(st.dictionaries(st.text(max_size=8), JSON_ANY, max_size=3)))
    return where.force(config)


# ---- properties ------------------------------------------------------------------------

@fuzz_settings("stdin_bytes")
@given(command=st.sampled_from(COMMANDS), stdin=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"", b"{", b"null", b"[]", b"\"x\"", b"1e999", b"{\"cniVersion\": 1}",
                     b"\xff\xfe{}", "{\"cniVersion\": \"1.0.0\"}".encode("utf-16")])))
def test_any_bytes_on_stdin(command, stdin):
    with_where(lambda where: judge(base_env(command, where), stdin, where))


@fuzz_settings("stdin_json")
@given(command=st.sampled_from(COMMANDS), document=JSON_ANY)
def test_any_json_document_on_stdin(command, document):
    with_where(lambda where: judge(base_env(command, where), json.dumps(document).encode(), where))


ENV_VALUE = st.one_of(st.none(), st.just(""), NAMEISH,
                      st.sampled_from(["eth0", "a" * 15, "a" * 16, ".", "..", "e/0", "e:0", "e 0",
                                       "nt9-c1", "_c", "-c", "c\n", "../../etc", "c" * 300,
                                       "/run/netns/nt9-none", "/proc/self/ns/net/..", "\x00"]))


@fuzz_settings("env")
@given(command=st.one_of(st.sampled_from(COMMANDS), st.sampled_from(["add", "", "DELETE", "GET"])),
       container=ENV_VALUE, netns=ENV_VALUE, ifname=ENV_VALUE, path=ENV_VALUE, version=VERSION_TEXT,
       limited=st.booleans())
def test_any_environment(command, container, netns, ifname, path, version, limited):
    if netns is not None and netns.startswith("/proc"):
        netns = "/run/netns/nt9-none"  # never a real namespace: the call must not reach a veth

    def body(where):
        config = {"cniVersion": version, "name": "net", "type": "natra", "prevResult": PREV}
        if limited:
            config["runtimeConfig"] = {"bandwidth": LIMIT}
        env = base_env(command, where, CNI_CONTAINERID=container, CNI_NETNS=netns, CNI_IFNAME=ifname,
                       CNI_PATH=path)
        code, _ = judge(env, json.dumps(config).encode(), where)
        valid_id = bool(container) and container[0].isascii() and container[0].isalnum() and all(
            c.isascii() and (c.isalnum() or c in "_.-") for c in container)
        valid_ifname = bool(ifname) and len(ifname) <= 15 and ifname not in (".", "..") and not any(
            c in "/:" or c.isspace() for c in ifname)
        if code == 0 and command in ("ADD", "DEL", "CHECK"):
            assert valid_id, f"container ID {container!r} was accepted"
            assert valid_ifname, f"interface name {ifname!r} was accepted"
    with_where(body)


CNI_ARGS_KEY = st.one_of(st.sampled_from(["K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_UID",
                                           "K8S_POD_INFRA_CONTAINER_ID", "IgnoreUnknown", ""]), NAMEISH)


@fuzz_settings("cni_args")
@given(pairs=st.lists(st.tuples(CNI_ARGS_KEY, NAMEISH, st.sampled_from(["=", "", "=="])), max_size=6),
       raw=st.one_of(st.none(), st.text(max_size=40)), command=st.sampled_from(["ADD", "DEL", "CHECK"]))
def test_any_cni_args(pairs, raw, command):
    text = raw if raw is not None else ";".join(f"{k}{sep}{v}" for k, v, sep in pairs)

    def body(where):
        config = {"cniVersion": "1.0.0", "name": "net", "type": "natra", "prevResult": PREV,
                  "runtimeConfig": {"bandwidth": LIMIT}}
        code, out = judge(base_env(command, where, CNI_ARGS=text), json.dumps(config).encode(), where,
                          must_succeed=command != "CHECK")
        if command == "ADD":
            assert out == versions.convert_result(PREV, "1.0.0")
    with_where(body)


@fuzz_settings("config")
@given(data=st.data(), command=st.sampled_from(COMMANDS))
def test_any_network_config(data, command):
    def body(where):
        config = data.draw(network_config(where))
        understood = (config.get("cniVersion") in versions.SUPPORTED_VERSIONS
                      and (config.get("prevResult") is None or isinstance(config["prevResult"], dict)))
        # DEL of an understood request succeeds whatever the rest of the config says.
        judge(base_env(command, where), json.dumps(config).encode(), where,
              must_succeed=command == "DEL" and understood)
    with_where(body)


@fuzz_settings("annotations")
@given(annotations=pod_annotations(), version=st.sampled_from(versions.SUPPORTED_VERSIONS),
       with_bandwidth=st.booleans())
def test_any_pod_annotations_fail_open(annotations, version, with_bandwidth):
    """Annotations come from whoever creates the Pod: they may only configure, never fail ADD."""
    def body(where):
        runtime = {ANNOTATIONS_CAP: annotations}
        if with_bandwidth:
            runtime["bandwidth"] = LIMIT
        config = {"cniVersion": version, "name": "net", "type": "natra",
                  "prevResult": versions.convert_result(PREV, version), "runtimeConfig": runtime}
        stdin = json.dumps(config).encode()
        _, out = judge(base_env("ADD", where), stdin, where, must_succeed=True)
        assert out == versions.convert_result(PREV, version)
        if versions.at_least(version, "0.4.0"):
            judge(base_env("CHECK", where), stdin, where, must_succeed=True)  # after a failed-open ADD
        judge(base_env("DEL", where), stdin, where, must_succeed=True)
        markers = os.path.join(where.state, "fail-open")
        assert not os.path.isdir(markers) or os.listdir(markers) == []  # DEL clears the fail-open marker
    with_where(body)


@fuzz_settings("quantities")
@given(text=QUANTITY_TEXT)
def test_any_quantity(text):
    """A quantity is a value or a QuantityError; a bandwidth is within [1k, 1P] or refused."""
    from fractions import Fraction

    from natra.cni.quantity import QuantityError, parse_bandwidth, parse_quantity

    try:
        value = parse_quantity(text)
    except QuantityError:
        value = None
    assert value is None or isinstance(value, Fraction)
    try:
        bps = parse_bandwidth(text)
    except QuantityError:
        return
    assert value is not None and 1000 <= bps <= 10**15 and bps >= value


# ---- named cases and the oversized stdin --------------------------------------------------

def test_oversized_stdin_is_refused_cleanly(where):
    config = {"cniVersion": "1.0.0", "name": "net", "type": "natra", "prevResult": PREV,
              "pad": "x" * MAX_STDIN_BYTES}
    code, out = judge(base_env("ADD", where), json.dumps(config).encode(), where)
    assert code == 1 and out["code"] == Kind.DECODE_FAILURE.value and "too large" in out["msg"]


def test_oversized_stdin_through_the_cli(tmp_path):
    """The real process: natra reads one byte beyond the limit and refuses, no traceback."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "nt9-c1",
           "CNI_NETNS": "/run/netns/nt9-none", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "NATRA_BPFFS_ROOT": str(tmp_path / "bpf"), "NATRA_STATE_DIR": str(tmp_path / "s"),
           "NATRA_LOG_FILE": str(tmp_path / "log"),
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    stdin = b'{"cniVersion": "1.0.0", "pad": "' + b"x" * (2 * MAX_STDIN_BYTES) + b'"}'
    done = subprocess.run([sys.executable, "-m", "natra"], input=stdin, env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["code"] == Kind.DECODE_FAILURE.value
    assert b"Traceback" not in done.stderr


def test_deeply_nested_stdin_is_a_decode_error(where):
    code, out = judge(base_env("ADD", where), b"[" * 100_000, where)
    assert code == 1 and out["code"] == Kind.DECODE_FAILURE.value


def test_overflowing_duration_annotation_fails_open(where):
    config = {"cniVersion": "1.0.0", "name": "net", "type": "natra", "prevResult": PREV,
              "runtimeConfig": {"bandwidth": LIMIT, ANNOTATIONS_CAP: {"natra.io/window": "9" * 400 + "s"}}}
    judge(base_env("ADD", where), json.dumps(config).encode(), where, must_succeed=True)


def test_del_succeeds_with_an_overflowing_config_duration(where):
    config = {"cniVersion": "1.0.0", "name": "net", "type": "natra", "window": "9" * 400 + "s"}
    judge(base_env("DEL", where), json.dumps(config).encode(), where, must_succeed=True)


def test_del_succeeds_with_a_huge_digit_count_in_the_config(where):
    config = {"cniVersion": "1.0.0", "name": "net", "type": "natra", "width": "9" * 5000}
    judge(base_env("DEL", where), json.dumps(config).encode(), where, must_succeed=True)
