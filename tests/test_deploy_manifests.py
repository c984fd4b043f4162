"""deploy/: every manifest valid for the current and two previous Kubernetes
minor versions kubernetes-validate knows, yamllint clean, and consistent with
the installer it runs (env names, ConfigMap keys, bundle path, defaults the
plugin accepts). The init container's env is replayed against a fake host root.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kv_utils = pytest.importorskip("kubernetes_validate.utils", reason="pip install kubernetes-validate")
yamllint_config = pytest.importorskip("yamllint.config", reason="pip install yamllint")
from yamllint import linter  # noqa: E402

from natra.node import chaining, install_cli  # noqa: E402
from natra.node import install as inst  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
FIXTURES = Path(__file__).parent / "fixtures" / "cni"
SUPPORTED_MINORS = 3  # the current minor and the two before it


def minor_versions() -> list[str]:
    """The newest SUPPORTED_MINORS minor versions kubernetes-validate has schemas for."""
    newest: dict[tuple[int, int], str] = {}
    for v in kv_utils.all_versions():
        major, minor, *_ = (int(x) for x in v.split("."))
        newest[(major, minor)] = max(newest.get((major, minor), v), v,
                                     key=lambda s: tuple(int(x) for x in s.split(".")))
    return [newest[k] for k in sorted(newest)[-SUPPORTED_MINORS:]]


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def the(kind: str) -> dict:
    found = [d for p in MANIFESTS for d in documents(p) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def test_there_are_manifests():
    assert MANIFESTS, "deploy/*.yaml missing"


@pytest.mark.parametrize("version", minor_versions())
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path, version):
    for doc in documents(path):
        kv_utils.validate(doc, version, strict=True)  # raises ValidationError


def test_a_broken_manifest_is_caught():
    """The validator used above does reject what the API server would."""
    ds = json.loads(json.dumps(the("DaemonSet")))
    exporter = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "exporter")
    exporter["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kv_utils.ValidationError, match="is not of type"):
        kv_utils.validate(ds, minor_versions()[-1], strict=True)
    exporter["ports"][0]["containerPort"] = 9695
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kv_utils.ValidationError):
        kv_utils.validate(ds, minor_versions()[-1], strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_yamllint_clean(path):
    problems = list(linter.run(path.read_text(), yamllint_config.YamlLintConfig("extends: default")))
    assert not problems, [f"{p.line}:{p.column} {p.message}" for p in problems]


def test_daemonset_runs_on_every_node_before_the_pod_network():
    ds = the("DaemonSet")
    assert ds["metadata"]["namespace"] == "kube-system"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    for c in pod["initContainers"] + pod["containers"]:
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]


def test_init_container_mounts_what_the_installer_writes():
    pod = the("DaemonSet")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    env = {e["name"]: e for e in init["env"]}
    host_root = env[install_cli.ENV_HOST_ROOT]["value"]
    for host_path in (inst.DEFAULT_CNI_BIN_DIR, inst.DEFAULT_CONF_DIR, inst.BPFFS_DIR):
        in_container = str(Path(host_root) / host_path)
        mount = mounts[in_container]
        assert volumes[mount["name"]]["hostPath"]["path"] == "/" + host_path
    assert mounts["/" + inst.BPFFS_DIR]["mountPropagation"] == "Bidirectional"
    assert init["command"] == ["natra", "$(NATRA_ACTION)"]


def test_env_names_and_configmap_keys_match_the_installer():
    pod = the("DaemonSet")["spec"]["template"]["spec"]
    config = the("ConfigMap")
    init = pod["initContainers"][0]
    known = {v for k, v in vars(install_cli).items() if k.startswith("ENV_")} | {"NATRA_ACTION"}
    for e in init["env"]:
        assert e["name"] in known, e["name"]
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == config["metadata"]["name"]
            assert ref["key"] in config["data"], ref["key"]
    assert config["data"]["action"] in install_cli.COMMANDS


def test_configmap_defaults_are_accepted_by_the_plugin():
    defaults = json.loads(the("ConfigMap")["data"]["defaults.json"])
    entry = chaining.natra_entry(defaults)
    assert entry["type"] == "natra"


def test_bundle_path_is_where_the_image_puts_it():
    init = the("DaemonSet")["spec"]["template"]["spec"]["initContainers"][0]
    bundle = next(e["value"] for e in init["env"] if e["name"] == install_cli.ENV_BUNDLE)
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert f"COPY --from=bundle /src/dist/natra {bundle}" in containerfile
    assert f"ln -s {bundle}/natra /usr/local/bin/natra" in containerfile


def test_init_container_env_installs_and_uninstalls_on_a_fake_node(tmp_path):
    """Replay the init container: its env, the ConfigMap's values, a calico node."""
    pod = the("DaemonSet")["spec"]["template"]["spec"]
    data = the("ConfigMap")["data"]
    root = tmp_path / "node"
    conf = root / inst.DEFAULT_CONF_DIR
    conf.mkdir(parents=True)
    shutil.copyfile(FIXTURES / "10-calico.conflist", conf / "10-calico.conflist")
    (tmp_path / "defaults.json").write_text(data["defaults.json"])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "natra").write_text("#!/bin/sh\n")
    (bundle / "natra").chmod(0o755)
    env = {}
    for e in pod["initContainers"][0]["env"]:
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        env[e["name"]] = data[ref["key"]] if ref else e["value"]
    env.update({install_cli.ENV_HOST_ROOT: str(root), install_cli.ENV_BUNDLE: str(bundle),
                install_cli.ENV_DEFAULTS_FILE: str(tmp_path / "defaults.json")})
    action = env.pop("NATRA_ACTION")
    assert install_cli.COMMANDS[action]([], env) == 0
    plugins = json.loads((conf / "10-calico.conflist").read_bytes())["plugins"]
    assert [p["type"] for p in plugins] == ["calico", "portmap", "natra"]
    assert install_cli.COMMANDS["uninstall"]([], env) == 0
    assert (conf / "10-calico.conflist").read_bytes() == (FIXTURES / "10-calico.conflist").read_bytes()


def test_the_agent_container_sees_what_the_plugin_sees():
    """The agent runs the plugin's calls: it needs the runtime's netns mounts as they come
    (HostToContainer), bpffs, and the socket, state, lock and log directories of the host."""
    import os

    from natra.cni import agentclient, serial

    spec = the("DaemonSet")["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert agent["command"][:2] == ["natra", "agent"]
    socket_path = agent["command"][agent["command"].index("--socket") + 1]
    assert socket_path == agentclient.DEFAULT_SOCKET
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["/run/netns"].get("mountPropagation") == "HostToContainer"
    for path in ("/sys/fs/bpf", "/run/netns", os.path.dirname(socket_path), serial.DEFAULT_LOCK_DIR,
                 "/run/natra/cni", "/var/log/natra"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert agent["securityContext"]["privileged"] is True
