"""The node image (deploy/Containerfile) run as deploy/natra.yaml runs it.

scripts/setup.sh builds the image with buildah from Debian bases that
packaging/base_images.sh makes with debootstrap (no registry is reachable
here): `make image-local`. These tests take the built image and check:

- its config and contents are what the manifest expects (no entrypoint,
  `natra` on PATH, the bundle where NATRA_BUNDLE says, no Python besides it);
- every ELF file of its bundle needs glibc 2.31 at most, and the bundle runs
  in a Debian 11 container (glibc 2.31), where the bundle built on this Debian
  12 machine (`make node-bundle`) does not: the negative control;
- a Debian 11 "node" (the plugin runs inside a Debian 11 container) limits a
  namespace Pod through the real ptp chain, libbpf and all;
- the init container, run from the image with the manifest's command, env,
  ConfigMap and volume mounts, chains Natra into a fake node's conflist; that
  chain limits a namespace Pod both ways; the exporter container, run from the
  image with the manifest's command and capabilities, serves that Pod's
  limits; the ConfigMap's `uninstall` action gives the conflist back byte for
  byte;
- the agent container, run from the image with the manifest's command,
  privileges and mounts, runs the node's plugin calls: a Pod's ADD, CHECK
  and DEL through the installed bundle are answered by it (its log says so),
  and the Pod is limited exactly as without it.

Without the image (or buildah) the tests skip on a workstation and fail under
CI, where set-up must have built it.

Deviations from a kubelet, all for isolation on a shared test machine: the
fake node's bin and conf dirs stand in for /opt/cni/bin and /etc/cni/net.d;
the ConfigMap's defaults get a private pin root and log file (and the
exporter NATRA_BPFFS_ROOT to match); the exporter listens on a free port; the
plugin finds the agent's socket under the fake node's /run
(NATRA_AGENT_SOCKET), and the real /run/netns is mounted into the agent.

Names: netns, pins and containers start with ni7-; everything is removed in
a finally, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import netns
import nodelab as N
import pytest
import yaml

from natra.lab.cnichain import DEBIAN_CNI_DIR
from natra.node import chaining
from natra.node import install as inst

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"localhost/natra:{VERSION}"
NETNS_DIR = "/run/netns"
DEBIAN_11 = ("localhost/natra-base:bullseye", "docker.io/library/debian:bullseye-slim")
HOST_BUNDLE = REPO / "dist" / "natra"
PREFIX = "ni7-"
BPFFS = "/sys/fs/bpf"
GLIBC_MAX = "2.31"


# linux/capability.h, by bit.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)


def privileged_caps() -> list[str]:
    """What a privileged container gets: every capability this process may hold
    (the sandbox's bounding set lacks some, so buildah's ALL is refused)."""
    bounding = next(int(line.split()[1], 16) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapBnd:"))
    return [f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1]


def _buildah(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check, **kw)


def _has_image(ref: str) -> bool:
    return shutil.which("buildah") is not None and \
        _buildah("inspect", "--type", "image", ref, check=False).returncode == 0


def _missing() -> str | None:
    # the image carries its own BPF objects; scripts/setup.sh installs buildah
    reason = netns.kernel_skip_reason(objects=(), tools=("buildah", "iperf3"), cni_plugins=("ptp",))
    if reason:
        return reason
    if not _has_image(IMAGE):
        return f"{IMAGE} not built (make image-local)"
    return None


pytestmark = pytest.mark.root


@pytest.fixture(scope="module", autouse=True)
def built_image() -> str:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the node image in set-up: {missing}")
        pytest.skip(missing)
    return IMAGE


class Container:
    """A buildah working container of an image; `run` is one command in it."""

    def __init__(self, image: str):
        self.name = f"{PREFIX}{secrets.token_hex(4)}"
        _buildah("from", "--pull-never", "--quiet", "--name", self.name, image)

    def command(self, argv: list[str], env: dict[str, str] | None = None,
                volumes: list[str] = (), network_host: bool = True,
                caps: tuple[list[str], list[str]] | None = None) -> list[str]:
        # chroot isolation: the command stays in buildah's process group, so
        # killing that group ends it (runc would move it to a session of its own).
        cmd = ["buildah", "run", "--isolation", "chroot"]
        if network_host:
            cmd += ["--network", "host"]
        for v in volumes:
            cmd += ["-v", v]
        for k, v in (env or {}).items():
            cmd += ["--env", f"{k}={v}"]
        if caps is not None:
            drop, add = caps
            cmd += ["--cap-drop", ",".join(drop)] if drop else []
            cmd += ["--cap-add", ",".join(add)] if add else []
        return [*cmd, self.name, "--", *argv]

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        stdin = kw.pop("input", "")
        return subprocess.run(self.command(argv, **kw), input=stdin, capture_output=True, text=True,
                              timeout=120)

    def mount(self) -> Path:
        return Path(_buildah("mount", self.name).stdout.strip())

    def remove(self) -> None:
        _buildah("umount", self.name, check=False)
        _buildah("rm", self.name, check=False)


@pytest.fixture
def container() -> Iterator[Callable[..., Container]]:
    made: list[Container] = []

    def make(image: str = IMAGE) -> Container:
        made.append(Container(image))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.remove()


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory) -> Iterator[Path]:
    """A copy of the image's /opt/natra/bundle on the host."""
    c = Container(IMAGE)
    try:
        dest = tmp_path_factory.mktemp("image") / "bundle"
        shutil.copytree(c.mount() / "opt/natra/bundle", dest, symlinks=True)
        yield dest
    finally:
        c.remove()


def _debian_11() -> str:
    found = next((ref for ref in DEBIAN_11 if _has_image(ref)), None)
    if found is None:
        pytest.fail(f"no Debian 11 image to run the bundle in (one of {DEBIAN_11})")
    return found


def _manifest() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "natra.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


# --- the image itself ------------------------------------------------------


def test_image_config_and_contents_match_the_manifest(container):
    info = json.loads(_buildah("inspect", "--type", "image", IMAGE).stdout)
    config = info["OCIv1"]["config"]
    assert config.get("Cmd") == ["natra", "--help"]
    assert not config.get("Entrypoint")
    assert config["Labels"]["org.opencontainers.image.title"] == "natra"
    pod = _manifest()["DaemonSet"]["spec"]["template"]["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        assert c["image"] == f"natra:{VERSION}", c["name"]
    bundle = next(e["value"] for e in pod["initContainers"][0]["env"] if e["name"] == "NATRA_BUNDLE")
    root = container().mount()
    assert os.readlink(root / "usr/local/bin/natra") == f"{bundle}/natra"
    assert (root / bundle.lstrip("/") / "natra").is_file()
    # Nothing of Python outside the bundle: the node runs what the bundle carries.
    assert not list((root / "usr/bin").glob("python*"))
    assert not (root / "usr/lib/x86_64-linux-gnu/libbpf.so.1").exists()


def test_image_bundle_needs_glibc_2_31_at_most(image_bundle):
    floor = subprocess.run([sys.executable, REPO / "packaging" / "glibc_floor.py", image_bundle,
                            "--max", GLIBC_MAX], capture_output=True, text=True)
    assert floor.returncode == 0, floor.stderr
    print(floor.stdout.strip())
    assert (image_bundle / "_internal" / "libbpf.so.1").exists()
    for obj in (REPO / "natra" / "bpf").glob("*.o"):
        assert (image_bundle / "_internal" / "natra" / "bpf" / obj.name).is_file(), obj.name


def test_image_bundle_runs_on_debian_11_where_the_host_bundle_does_not(container, image_bundle):
    c = container(_debian_11())
    libc = c.run(["ldd", "--version"]).stdout.splitlines()[0]
    assert libc.endswith(f" {GLIBC_MAX}"), libc
    vols = [f"{image_bundle}:/opt/natra/bundle:ro"]
    out = c.run(["/opt/natra/bundle/natra"], env={"CNI_COMMAND": "VERSION"}, volumes=vols)
    assert out.returncode == 0, out.stderr
    assert "1.1.0" in json.loads(out.stdout)["supportedVersions"]
    assert c.run(["/opt/natra/bundle/natra", "version"], volumes=vols).returncode == 0
    # The negative control: the bundle built on this Debian 12 machine.
    if not (HOST_BUNDLE / "natra").is_file():
        pytest.skip("make node-bundle not run: no host bundle for the negative control")
    host = c.run(["/opt/natra/bundle/natra", "version"], volumes=[f"{HOST_BUNDLE}:/opt/natra/bundle:ro"])
    assert host.returncode != 0
    assert "GLIBC_2.3" in host.stderr and "not found" in host.stderr, host.stderr
    # ... and the floor check the image's build runs refuses it.
    floor = subprocess.run([sys.executable, REPO / "packaging" / "glibc_floor.py", HOST_BUNDLE,
                            "--max", GLIBC_MAX], capture_output=True, text=True)
    assert floor.returncode == 1 and "libpython" in floor.stderr, floor.stderr


# --- a Debian 11 node --------------------------------------------------------

WRAPPER = """#!/bin/sh
# /opt/cni/bin/natra of a Debian 11 node: the image's bundle run in a Debian 11
# container that sees the host's network, netns files, bpffs and log dir, with
# every capability, as a runtime runs a plugin. runc isolation: buildah's chroot
# isolation mounts /sys read-only, bpffs under it included.
exec buildah run --isolation oci --network host --cap-add {caps} \\
  -v {bundle}:/opt/natra/bundle:ro -v /run/netns:/run/netns:rbind -v {bpffs}:{bpffs}:rbind \\
  -v {logdir}:{logdir} \\
  --env CNI_COMMAND="$CNI_COMMAND" --env CNI_CONTAINERID="$CNI_CONTAINERID" \\
  --env CNI_NETNS="$CNI_NETNS" --env CNI_IFNAME="$CNI_IFNAME" --env CNI_ARGS="$CNI_ARGS" \\
  --env CNI_PATH="$CNI_PATH" {container} -- /opt/natra/bundle/natra
"""


def test_a_debian_11_node_limits_a_pod(tmp_path, container, image_bundle):
    tag = secrets.token_hex(3)
    root = tmp_path / "host"
    N.fake_host(root, f"{PREFIX}{tag}", tmp_path / "ipam")
    pins = f"{BPFFS}/{PREFIX}{tag}"
    logdir = tmp_path / "log"
    logdir.mkdir()
    c = container(_debian_11())
    bin_dir = root / inst.DEFAULT_CNI_BIN_DIR
    (bin_dir / "natra").write_text(WRAPPER.format(bundle=image_bundle, bpffs=BPFFS, logdir=logdir,
                                                  container=c.name, caps=",".join(privileged_caps())))
    (bin_dir / "natra").chmod(0o755)
    conf = root / inst.DEFAULT_CONF_DIR / N.CONFLIST
    conflist = json.loads(conf.read_bytes())
    entry = chaining.natra_entry({"bpffsRoot": pins, "logFile": str(logdir / "cni.log")})
    conflist["plugins"].insert(1, entry)
    conf.write_text(json.dumps(conflist))
    os.makedirs(pins, exist_ok=True)
    try:
        with N.limited_pod(root, f"{PREFIX}{tag}", directions=N.BOTH_WAYS[:1]):
            assert os.listdir(pins), "the plugin pinned nothing"
        assert os.listdir(pins) == []
        log = (logdir / "cni.log").read_text()
        assert "ADD" in log and "DEL" in log
    finally:
        N.remove_ifbs(pins)
        subprocess.run(["rm", "-rf", pins], capture_output=True)


# --- the DaemonSet's containers ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeNode:
    """Runs the DaemonSet's containers from the image against a fake node."""

    def __init__(self, tmp_path: Path, container, tag: str, pins: str | None = None):
        self.root = tmp_path / "host"
        self.original = N.fake_host(self.root, f"{PREFIX}{tag}", tmp_path / "ipam")
        self.pins = pins or f"{BPFFS}/{PREFIX}{tag}"
        self.manifest = _manifest()
        self.pod = self.manifest["DaemonSet"]["spec"]["template"]["spec"]
        data = dict(self.manifest["ConfigMap"]["data"])
        defaults = json.loads(data["defaults.json"])
        defaults.update(bpffsRoot=self.pins, logFile=str(tmp_path / "log" / "cni.log"))
        data["defaults.json"] = json.dumps(defaults)
        self.data = data
        self.config_dir = tmp_path / "configmap"
        self.config_dir.mkdir()
        for key, value in data.items():
            (self.config_dir / key).write_text(value)
        (tmp_path / "log").mkdir()
        self.container = container()

    def host_path(self, volume: dict) -> str:
        if "configMap" in volume:
            return str(self.config_dir)
        path = volume["hostPath"]["path"]
        if path in (BPFFS, NETNS_DIR):  # the real ones: the Pods' pins and namespaces are real
            return path
        if volume["hostPath"].get("type") == "DirectoryOrCreate":  # as the kubelet does
            (self.root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        return str(self.root / path.lstrip("/"))

    def run(self, spec: dict, env_extra: dict | None = None, popen: bool = False,
            extra_mounts: tuple[str, ...] = ()):
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        mounts = [f"{self.host_path(volumes[m['name']])}:{m['mountPath']}"
                  + (":ro" if m.get("readOnly") else (":rbind" if m["mountPath"] == BPFFS else
                     ":rslave" if m.get("mountPropagation") == "HostToContainer" else ""))
                  for m in spec.get("volumeMounts", [])] + list(extra_mounts)
        env = {}
        for e in spec.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            env[e["name"]] = self.data[ref["key"]] if ref else e["value"]
        env.update(env_extra or {})
        # Kubernetes expands $(VAR) in command and args from the container's env.
        argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a)
                for a in spec["command"] + spec.get("args", [])]
        sc = spec.get("securityContext", {})
        caps = None
        if sc.get("privileged"):
            caps = ([], privileged_caps())
        elif "capabilities" in sc:
            # Kubernetes drops first, then adds; buildah applies its drops last,
            # so "drop ALL, add X" becomes "drop everything but X".
            named = sc["capabilities"]
            add = [f"CAP_{c}" for c in named.get("add", [])]
            drop = [f"CAP_{c}" for c in named.get("drop", [])]
            if "CAP_ALL" in drop:
                drop = [c for c in privileged_caps() if c not in add]
            caps = (drop, add)
        cmd = self.container.command(argv, env=env, volumes=mounts, caps=caps)
        if popen:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def init(self, action: str) -> subprocess.CompletedProcess:
        self.data["action"] = action
        return self.run(self.pod["initContainers"][0])


def _scrape(port: int, deadline_s: float) -> str:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_daemonset_containers_from_the_image_install_limit_export_uninstall(tmp_path, container):
    tag = secrets.token_hex(3)
    node = FakeNode(tmp_path, container, tag)
    os.makedirs(node.pins, exist_ok=True)
    exporter = None
    try:
        done = node.init("install")
        assert done.returncode == 0, done.stdout + done.stderr
        bin_dir = node.root / inst.DEFAULT_CNI_BIN_DIR
        assert (bin_dir / "natra").is_symlink()
        with N.limited_pod(node.root, f"{PREFIX}{tag}") as pod:
            port = _free_port()
            spec = next(c for c in node.pod["containers"] if c["name"] == "exporter")
            exporter = node.run(spec, env_extra={"NATRA_METRICS_PORT": str(port),
                                                 "NATRA_BPFFS_ROOT": node.pins}, popen=True)
            try:
                metrics = _scrape(port, deadline_s=20)
            finally:
                os.killpg(exporter.pid, 15)
                said = exporter.communicate(timeout=10)[0]
            assert re.search(r"^natra_pods 1\.0$", metrics, re.M), said + metrics[-1500:]
            limit = [line for line in metrics.splitlines()
                     if line.startswith("natra_limit_bytes_per_second{") and f'pod="{pod.name}"' in line]
            assert len(limit) == 2, limit
            assert all(float(line.split()[-1]) == N.LIMIT_BPS / 8 for line in limit), limit
            exporter = None
        done = node.init("uninstall")
        assert done.returncode == 0, done.stdout + done.stderr
        assert (node.root / inst.DEFAULT_CONF_DIR / N.CONFLIST).read_bytes() == node.original
        assert sorted(p.name for p in bin_dir.iterdir()) == sorted(os.listdir(DEBIAN_CNI_DIR))
    finally:
        if exporter is not None:
            os.killpg(exporter.pid, 9)
            exporter.wait(timeout=10)
        N.remove_ifbs(node.pins)
        subprocess.run(["rm", "-rf", node.pins], capture_output=True)


def test_daemonset_agent_from_the_image_runs_the_nodes_plugin_calls(tmp_path, container):
    """The first Pod's namespace exists when the agent starts, so the agent's /run/netns
    mount holds it and the agent runs its calls. The second Pod's namespace is made after:
    buildah's chroot isolation does not pass new mounts into the container (a kubelet's
    HostToContainer does), so the agent sees an empty file there, leaves the calls to the
    plugin, and the Pod is limited all the same."""
    from natra.kernel import datapath

    tag = secrets.token_hex(3)
    # buildah lays a read-only /sys over the container's /sys/fs/bpf (a kubelet's privileged
    # container gets it writable), so the pins go to a private bpffs outside /sys, mounted
    # at the same path in the agent's container.
    private = f"/run/{PREFIX}bpffs-{tag}"
    os.makedirs(private)
    subprocess.run(["mount", "-t", "bpf", "bpf", private], check=True)
    node = FakeNode(tmp_path, container, tag, pins=f"{private}/pins")
    os.makedirs(node.pins, exist_ok=True)
    agent = None
    limits = {"IngressRate": N.LIMIT_BPS, "IngressBurst": N.MAX_UINT32,
              "EgressRate": N.LIMIT_BPS, "EgressBurst": N.MAX_UINT32}
    try:
        done = node.init("install")
        assert done.returncode == 0, done.stdout + done.stderr
        chain = N.chain_of(node.root)
        hooked, gone = {}, {}
        with N.Pod(chain, f"{PREFIX}{tag}", limits) as first:
            spec = next(c for c in node.pod["containers"] if c["name"] == "agent")
            agent = node.run(spec, popen=True, extra_mounts=(f"{private}:{private}:rbind",))
            sock_dir = node.host_path(next(v for v in node.pod["volumes"] if v["name"] == "natra-agent"))
            sock = os.path.join(sock_dir, "agent.sock")
            deadline = time.monotonic() + 60
            while not os.path.exists(sock):
                assert agent.poll() is None and time.monotonic() < deadline, agent.communicate(timeout=10)[0]
                time.sleep(0.1)
            chain.extra_env = {"NATRA_AGENT_SOCKET": sock}
            with N.Pod(chain, f"{PREFIX}{tag}b", limits) as second:
                for pod in (first, second):
                    pod.add()
                    hooked[pod.name] = N.hooked_programs(pod.host_veth)
                    chain.check(pod.att)
                    chain.delete(pod.att)
                    gone[pod.name] = datapath.inspect(pod.att.container_id, root=node.pins) is None
        os.killpg(agent.pid, 15)
        said = agent.communicate(timeout=20)[0]
        agent = None
        assert hooked == {first.name: 2, second.name: 2}, said[-3000:]
        assert all(gone.values()), gone
        for command in ("ADD", "CHECK", "DEL"):
            assert f"{command} {first.att.container_id} exit 0" in said, said[-3000:]
        assert f"ADD {second.att.container_id} is left to the plugin" in said, said[-3000:]
        assert f"CHECK {second.att.container_id} is left to the plugin" in said, said[-3000:]
    finally:
        if agent is not None:
            os.killpg(agent.pid, 9)
            agent.wait(timeout=10)
        N.remove_ifbs(node.pins)
        subprocess.run(["umount", "-l", private], capture_output=True)
        os.rmdir(private)
