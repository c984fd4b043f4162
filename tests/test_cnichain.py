"""natra/lab/cnichain.py without root: libcni's conflist semantics, checked on recording plugins.

The plugins here are real executables (small Python scripts in a temp bin dir)
that record what they were given and answer like a chained plugin; the kernel
half (Debian's ptp and natra) is tests/kernel/test_cni_chain.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natra.lab import cnichain as N

# A plugin that appends {command, env, config} to $RECORD and prints prevResult with one more
# interface named after itself (ADD), nothing (DEL/CHECK), or fails when its config says so.
RECORDER = """#!{python}
import json, os, sys
config = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"command": command, "config": config,
                        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}}}) + "\\n")
if config.get("fail") == command:
    print(json.dumps({{"cniVersion": config["cniVersion"], "code": 7, "msg": "asked to fail"}}))
    sys.exit(1)
if command == "ADD":
    prev = config.get("prevResult") or {{"cniVersion": config["cniVersion"], "interfaces": [],
                                           "ips": [{{"address": "10.98.0.5/24"}}]}}
    prev["interfaces"] = prev["interfaces"] + [{{"name": config["type"]}}]
    prev["cniVersion"] = config["cniVersion"]
    print(json.dumps(prev))
"""


@pytest.fixture
def lab(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("first", "second", "third"):
        path = bin_dir / name
        path.write_text(RECORDER.format(python=sys.executable))
        path.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    conflist = {"cniVersion": "1.1.0", "name": "net",
                "plugins": [{"type": "first"}, {"type": "second", "capabilities": {"bandwidth": True}},
                            {"type": "third"}]}

    def calls() -> list[dict]:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    return N.Chain(conflist, str(bin_dir), extra_env={"RECORD": str(record)}, version_caps={}), calls


def attachment() -> N.Attachment:
    return N.Attachment("cid-1", "/run/netns/x", k8s_args={"K8S_POD_NAME": "p"},
                        capability_args={"bandwidth": {"IngressRate": 1000}, "portMappings": []})


def test_add_threads_prev_result_in_order_and_caches_it(lab):
    chain, calls = lab
    att = attachment()
    result = chain.add(att)
    assert [i["name"] for i in result["interfaces"]] == ["first", "second", "third"]
    assert att.cached_result == result and att.ip == "10.98.0.5" and att.host_ifname == "first"
    made = calls()
    assert [c["config"]["type"] for c in made] == ["first", "second", "third"]
    assert "prevResult" not in made[0]["config"]
    assert made[2]["config"]["prevResult"]["interfaces"] == [{"name": "first"}, {"name": "second"}]
    assert all(c["config"]["name"] == "net" and c["config"]["cniVersion"] == "1.1.0" for c in made)
    env = made[0]["env"]
    assert (env["CNI_COMMAND"], env["CNI_CONTAINERID"], env["CNI_NETNS"], env["CNI_IFNAME"]) == (
        "ADD", "cid-1", "/run/netns/x", "eth0")
    assert env["CNI_PATH"] == chain.bin_dir
    assert sorted(env["CNI_ARGS"].split(";")) == ["IgnoreUnknown=1", "K8S_POD_NAME=p"]


def test_runtime_config_only_for_declared_capabilities(lab):
    chain, calls = lab
    chain.add(attachment())
    configs = {c["config"]["type"]: c["config"] for c in calls()}
    assert configs["second"]["runtimeConfig"] == {"bandwidth": {"IngressRate": 1000}}
    assert "runtimeConfig" not in configs["first"] and "runtimeConfig" not in configs["third"]


def test_del_runs_in_reverse_with_the_cached_result_and_check_in_order(lab):
    chain, calls = lab
    att = attachment()
    cached = chain.add(att)
    chain.check(att)
    chain.delete(att)
    made = calls()[3:]
    assert [(c["command"], c["config"]["type"]) for c in made] == [
        ("CHECK", "first"), ("CHECK", "second"), ("CHECK", "third"),
        ("DEL", "third"), ("DEL", "second"), ("DEL", "first")]
    assert all(c["config"]["prevResult"] == cached for c in made)
    assert att.cached_result is None


def test_failure_raises_at_the_failing_plugin_or_is_reported(lab):
    chain, calls = lab
    chain.conflist["plugins"][1]["fail"] = "ADD"
    with pytest.raises(N.ChainError) as err:
        chain.add(attachment())
    assert (err.value.plugin, err.value.command, err.value.code) == ("second", "ADD", 1)
    assert err.value.output["code"] == 7
    att = attachment()
    reported = chain.add_calls(att)
    assert [(c.plugin, c.ok) for c in reported] == [("first", True), ("second", False)]  # stops there
    assert att.cached_result is None
    chain.conflist["plugins"][1]["fail"] = "DEL"
    dels = chain.delete_calls(att)
    assert [(c.plugin, c.ok) for c in dels] == [("third", True), ("second", False), ("first", True)]


@given(version=st.sampled_from(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]))
def test_a_capped_plugin_runs_at_the_lower_version_with_its_prev_result_relabelled(version):
    chain = N.Chain({"cniVersion": version, "name": "n", "plugins": []}, "/nonexistent")
    prev = {"cniVersion": version, "interfaces": []}
    ptp = chain.plugin_config({"type": "ptp"}, None, prev)
    natra = chain.plugin_config({"type": "natra"}, None, prev)
    want = "1.0.0" if version == "1.1.0" else version  # Debian's plugins stop at 1.0.0
    assert ptp["cniVersion"] == ptp["prevResult"]["cniVersion"] == want
    assert natra["cniVersion"] == natra["prevResult"]["cniVersion"] == version


def test_status_gc_and_version_per_plugin(lab):
    chain, calls = lab
    att = attachment()
    assert chain.status("first").ok and chain.gc("third", [att], key="cni.dev/attachments").ok
    status, gc = calls()
    assert status["command"] == "STATUS" and "CNI_CONTAINERID" not in status["env"]
    assert gc["config"]["cni.dev/attachments"] == [{"containerID": "cid-1", "ifname": "eth0"}]


@pytest.mark.skipif(not os.path.isdir(N.DEBIAN_CNI_DIR), reason=f"{N.DEBIAN_CNI_DIR} missing")
def test_bin_dir_links_debian_plugins_and_natra_or_the_bundle(tmp_path, monkeypatch):
    monkeypatch.delenv(N.NATRA_PLUGIN_ENV, raising=False)
    plain = N.make_bin_dir(str(tmp_path / "plain"))
    assert os.readlink(os.path.join(plain, "ptp")) == os.path.join(N.DEBIAN_CNI_DIR, "ptp")
    launcher = os.path.join(plain, "natra")
    assert not os.path.islink(launcher) and "-m natra" in Path(launcher).read_text()
    (tmp_path / "dist").mkdir()
    bundle = tmp_path / "dist" / "natra"
    bundle.write_text("#!/bin/sh\n")
    bundle.chmod(0o755)
    monkeypatch.setenv(N.NATRA_PLUGIN_ENV, str(bundle))
    frozen = N.make_bin_dir(str(tmp_path / "frozen"))
    assert os.readlink(os.path.join(frozen, "natra")) == str(bundle)
    again = N.make_bin_dir(plain)  # an existing dir: natra is replaced, Debian's links kept
    assert os.readlink(os.path.join(again, "natra")) == str(bundle)
    monkeypatch.setenv(N.NATRA_PLUGIN_ENV, "relative/natra")
    with pytest.raises(FileNotFoundError, match=N.NATRA_PLUGIN_ENV):
        N.make_bin_dir(str(tmp_path / "bad"))
