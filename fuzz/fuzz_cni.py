#!/usr/bin/env python3
"""Coverage-guided fuzzing of the CNI plugin's input handling with atheris, for long runs.

Owns: one atheris target that turns fuzzer bytes into a CNI call (command,
CNI_* environment, CNI_ARGS, and stdin: either the raw bytes or a network
config assembled from fuzzed pieces: bandwidth keys, quantities, natra.io/
annotations and the extended JSON form) and runs `natra.cni.plugin.run`
in-process, with the same oracle as tests/test_fuzz_cni.py: exit code 0 or
1, stdout one JSON document of the right shape, an error with a code from the
errors table, DEL of an understood request succeeding, ADD with a valid
config failing open whatever the annotations say, nothing left in the pin
root. A violated rule raises, which atheris reports with the input.
Rule: no kernel state: every location is a temporary directory (the pin root
is a plain directory, so nothing can be pinned) and CNI_NETNS never names a
namespace.
Must not know: the plugin's modules beyond plugin.run and the public tables.

Run (pip install atheris; Python 3.11 wheels exist):
    python3 fuzz/fuzz_cni.py -atheris_runs=200000          # a fixed number of inputs
    python3 fuzz/fuzz_cni.py -max_total_time=3600 corpus/   # an hour, keeping a corpus
A crash leaves crash-<sha1> with the input; replay it with
    python3 fuzz/fuzz_cni.py crash-<sha1>
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from natra.cni import plugin, versions
    from natra.cni.errors import Kind

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
ANNOTATION_KEYS = ("natra.io/width", "natra.io/depth", "natra.io/threshold", "natra.io/window",
                   "natra.io/max-burst-time", "natra.io/reserve", "natra.io/ecn", "natra.io/flow-table",
                   "kubernetes.io/ingress-bandwidth", "kubernetes.io/egress-bandwidth")
BANDWIDTH_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst", "IngressRate", "EgressBurst")
TUNING_KEYS = ("width", "depth", "threshold", "window", "maxBurstTime", "reserve", "ecn", "flowTable",
               "attachMode", "logMaxBytes")
ERROR_CODES = frozenset(k.value for k in Kind)
SECRET = "fuzz-secret-annotation-value"
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "veth0nt9"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"interface": 1, "address": "10.219.0.5/24"}]}
BASE_PREFIX = "nt9-atheris-"


def _remove_stale_bases() -> None:
    """libFuzzer leaves through _exit, so a finished run cannot remove its directory: the next does."""
    parent = tempfile.gettempdir()
    for name in os.listdir(parent):
        pid = name[len(BASE_PREFIX):]
        if name.startswith(BASE_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


_remove_stale_bases()
BASE = os.path.join(tempfile.gettempdir(), f"{BASE_PREFIX}{os.getpid()}")
ROOT = os.path.join(BASE, "bpf")
os.makedirs(ROOT, mode=0o700, exist_ok=True)
ENV_BASE = {"NATRA_BPFFS_ROOT": ROOT, "NATRA_STATE_DIR": os.path.join(BASE, "state"),
            "NATRA_LOG_FILE": os.path.join(BASE, "log")}


def _value(fdp: atheris.FuzzedDataProvider):
    """A JSON value of any type, weighted towards what the readers parse."""
    kind = fdp.ConsumeIntInRange(0, 5)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(24)
    if kind == 1:
        return fdp.ConsumeInt(8)
    if kind == 2:
        return fdp.ConsumeBool()
    if kind == 3:
        return None
    if kind == 4:  # the extended form
        form = {"rate": fdp.ConsumeUnicodeNoSurrogates(12)}
        if fdp.ConsumeBool():
            form["burst"] = fdp.ConsumeUnicodeNoSurrogates(12)
        if fdp.ConsumeBool():
            form["cms"] = {"width": fdp.ConsumeInt(4), "depth": fdp.ConsumeInt(1),
                           "heavyHitterThreshold": fdp.ConsumeInt(8)}
        return json.dumps(form)
    return fdp.ConsumeFloat()


def _config(fdp: atheris.FuzzedDataProvider) -> tuple[dict, bool]:
    """A network config and whether only its annotations are fuzzed (then ADD must succeed)."""
    version = versions.SUPPORTED_VERSIONS[fdp.ConsumeIntInRange(0, len(versions.SUPPORTED_VERSIONS) - 1)]
    annotations = {"example.com/token": SECRET}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        annotations[ANNOTATION_KEYS[fdp.ConsumeIntInRange(0, len(ANNOTATION_KEYS) - 1)]] = _value(fdp)
    runtime = {"io.kubernetes.cri.pod-annotations": annotations}
    config = {"cniVersion": version, "name": "n", "type": "natra", "prevResult": PREV,
              "runtimeConfig": runtime}
    only_annotations = fdp.ConsumeBool()
    if only_annotations:
        runtime["bandwidth"] = {"ingressRate": 10_000_000, "ingressBurst": 10_000_000}
        return config, True
    bandwidth = {BANDWIDTH_KEYS[fdp.ConsumeIntInRange(0, len(BANDWIDTH_KEYS) - 1)]: _value(fdp)
                 for _ in range(fdp.ConsumeIntInRange(0, 4))}
    runtime["bandwidth"] = bandwidth
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        config[TUNING_KEYS[fdp.ConsumeIntInRange(0, len(TUNING_KEYS) - 1)]] = _value(fdp)
    if fdp.ConsumeBool():
        config["cniVersion"] = fdp.ConsumeUnicodeNoSurrogates(6)
    return config, False


def _check(env: dict, stdin: bytes, must_succeed: bool) -> None:
    code, out = plugin.run(env, stdin, now=1_700_000_000 * 10**9, stderr=io.StringIO())
    if code not in (0, 1):
        raise AssertionError(f"exit code {code}")
    text = out.decode("utf-8")
    parsed = json.loads(text) if text.strip() else None
    command = env.get("CNI_COMMAND")
    if code == 1:
        if not (isinstance(parsed, dict) and parsed.get("code") in ERROR_CODES and parsed.get("msg")):
            raise AssertionError(f"not a spec error: {text!r}")
        if must_succeed:
            raise AssertionError(f"{command} must succeed: {parsed}")
    elif command in ("ADD", "VERSION") and not isinstance(parsed, dict):
        raise AssertionError(f"{command} printed {text!r}")
    if os.listdir(ROOT):
        raise AssertionError(f"partial state left: {os.listdir(ROOT)}")
    log = os.path.join(BASE, "log")
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            if SECRET in f.read():
                raise AssertionError("a foreign annotation value reached the log")
        os.unlink(log)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    command = COMMANDS[fdp.ConsumeIntInRange(0, len(COMMANDS) - 1)]
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "nt9-c1", "CNI_NETNS": "/run/netns/nt9-none",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", **ENV_BASE}
    if fdp.ConsumeIntInRange(0, 3) == 0:  # fuzz the environment too
        for key in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_ARGS"):
            env[key] = fdp.ConsumeUnicodeNoSurrogates(20).replace("\x00", "")
    if fdp.ConsumeIntInRange(0, 3) == 0:  # raw stdin
        _check(env, fdp.ConsumeBytes(fdp.remaining_bytes()), must_succeed=False)
        return
    config, only_annotations = _config(fdp)
    valid_env = env["CNI_CONTAINERID"] == "nt9-c1" and env["CNI_IFNAME"] == "eth0"
    must = valid_env and ((command == "ADD" and only_annotations) or
                          (command == "DEL" and config["cniVersion"] in versions.SUPPORTED_VERSIONS))
    _check(env, json.dumps(config).encode(), must_succeed=must)


def main() -> None:
    atexit.register(shutil.rmtree, BASE, True)  # when Python does get to exit normally
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
