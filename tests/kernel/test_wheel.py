"""Natra as a user installs it: an sdist and a wheel built from a clean copy, a fresh venv.

The copy holds only what git tracks or would track (no natra/bpf/*.o, no
reference/_natra_fast.so): the sdist is built from it, the wheel from the
sdist (setup.py's hook compiles the objects and the accelerator), and the
wheel is installed into `python3 -m venv` without system site-packages. The
installed `natra` then answers VERSION and runs ADD, CHECK and DEL as the
middle of a ptp chain against a namespace Pod whose limit is measured both
ways (tests/kernel/nodelab.py); `natra-sim` names its extra while it is
missing and, once `natra[sim]` is installed, replays a capture through the
real program (`--engine kernel`).
Needs root, bpffs, clang, Debian's CNI plugins, iperf3 and PyPI (the venv's
dependencies come from there). Names start with nw7-; everything is removed
in a finally.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import netns
import nodelab as N
import pytest

from natra.lab.cnichain import natra_entry
from natra.node import install as inst

REPO = Path(__file__).resolve().parents[2]
PREFIX = "nw7-"
BPFFS = "/sys/fs/bpf"
PIP = ["-m", "pip", "--disable-pip-version-check", "-q"]
IN_THE_WHEEL = ("natra/bpf/natra.bpf.o", "natra/bpf/natra_trace.bpf.o", "natra/bpf/natra_parse.bpf.o",
                "natra/bpf/natra_compat.bpf.o",
                "natra/bpf/natra.h", "natra/reference/_natra_fast.so", "natra/node/web/index.html",
                "natra/lab/cri/runtime.py", "natra/kernel/loader.py")


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


def _missing() -> str | None:
    # the wheel builds its own BPF objects
    reason = netns.kernel_skip_reason(objects=(), node_bpffs=True, tools=("clang", "make", "iperf3", "git"),
                                      cni_plugins=("ptp", "host-local"))
    if reason:
        return reason
    if not (REPO / ".git").exists():
        return "not a git checkout: the clean copy is made from git's file list"
    if not _pypi_reachable():
        return "PyPI unreachable: the venv takes prometheus_client and the sim extra from it"
    return None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 120)
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}: {out.stderr[-2000:]}"
    return out


def clean_copy(dest: Path) -> None:
    """The checkout as a clone would have it: tracked and untracked-but-not-ignored files."""
    files = run("git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z").stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the wheel installed (no extras), and the wheel's path."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    clean_copy(src)
    assert not list((src / "natra" / "bpf").glob("*.o")), "the copy must not carry built objects"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    build_sdist = f"from setuptools import build_meta; print(build_meta.build_sdist({str(base / 'sdist')!r}))"
    sdist = base / "sdist" / run("python3", "-c", build_sdist, cwd=src, env=env).stdout.split()[-1]
    run("python3", *PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", base / "dist", sdist,
        cwd=base, env=env)
    (wheel,) = (base / "dist").glob("natra-*.whl")
    run("python3", "-m", "venv", base / "venv", env=env)
    python = base / "venv" / "bin" / "python"
    run(python, *PIP, "install", wheel, cwd=base, env=env)
    return base / "venv", wheel, env


def test_the_wheel_carries_the_objects_the_accelerator_and_every_package(venv):
    _, wheel, _ = venv
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [n for n in IN_THE_WHEEL if n not in names] == []
    assert "-py3-none-linux_" in wheel.name  # ELF inside: a platform wheel


def test_installed_plugin_adds_and_deletes_a_namespace_pod(venv, tmp_path):
    env_dir, _, env = venv
    natra = env_dir / "bin" / "natra"
    where = run(env_dir / "bin" / "python", "-c", "import natra; print(natra.__file__)", cwd="/", env=env)
    assert where.stdout.startswith(str(env_dir)), where.stdout  # the wheel's copy, not this checkout
    info = json.loads(run(natra, input="", cwd="/", env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
                      .stdout)
    assert set(info["supportedVersions"]) >= {"0.3.1", "1.0.0", "1.1.0"}

    tag = secrets.token_hex(3)
    root = tmp_path / "host"
    pins = f"{BPFFS}/{PREFIX}{tag}"
    os.makedirs(pins)
    try:
        N.fake_host(root, f"{PREFIX}{tag}", tmp_path / "ipam")
        conflist_path = root / inst.DEFAULT_CONF_DIR / N.CONFLIST
        conflist = json.loads(conflist_path.read_bytes())
        conflist["plugins"].insert(1, natra_entry(bpffsRoot=pins, logFile=str(tmp_path / "natra.log")))
        conflist_path.write_text(json.dumps(conflist))
        os.symlink(natra, root / inst.DEFAULT_CNI_BIN_DIR / "natra")
        with N.limited_pod(root, f"{PREFIX}{tag}"):  # ADD, CHECK, the limit both ways, DEL
            assert len(os.listdir(pins)) == 1
        assert os.listdir(pins) == []
    finally:
        N.remove_ifbs(pins)
        subprocess.run(["rm", "-rf", pins], capture_output=True)


def test_natra_sim_names_its_extra_then_replays_through_the_kernel(venv, tmp_path):
    env_dir, wheel, env = venv
    sim = env_dir / "bin" / "natra-sim"
    bare = subprocess.run([sim, "--help"], capture_output=True, text=True, cwd="/", env=env, timeout=60)
    assert bare.returncode == 2
    assert "pip install 'natra[sim]'" in bare.stderr and "Traceback" not in bare.stderr

    run(env_dir / "bin" / "python", *PIP, "install", f"{wheel}[sim]", cwd="/", env=env, timeout=300)
    assert "replay" in run(sim, "--help", cwd="/", env=env).stdout
    pcap = tmp_path / "mix.pcap"
    run(sim, "workload", "mix", pcap, "--rate", "100M", "--duration", "200ms", "--seed", "7",
        "--limit", "3000", "--snaplen", "3500", cwd="/", env=env)
    summary = json.loads(run(sim, "replay", pcap, "--rate", "10M", "--engine", "kernel", "--json",
                             cwd="/", env=env).stdout)
    assert summary["packets"] >= 1000
    assert summary["verdicts"]["pass_mouse"] and summary["verdicts"]["drop_heavy"]
