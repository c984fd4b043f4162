"""natra.node.chaining, install and install_cli on fake host roots holding real-world conflists.

Each fixture in tests/fixtures/cni is a config in the shape its project ships.
The round trip (install, install again, uninstall) must leave every byte of the
host as it was, and the chained config must be one a runtime runs: the file
the runtime picks, Natra right after the main plugin, both capabilities
declared, and an entry the plugin's own parser accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natra.cni import tuning
from natra.lab.cnichain import Attachment, Chain
from natra.node import chaining, install_cli
from natra.node import install as inst

FIXTURES = Path(__file__).parent / "fixtures" / "cni"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if p.name.endswith(chaining.CONF_EXTENSIONS))
CONFLISTS = [n for n in ALL_FIXTURES if n.endswith(".conflist")]
DEFAULTS = {"attachMode": "auto", "window": "100ms", "maxBurstTime": "500ms", "width": 1024, "depth": 4,
            "logFile": "/var/log/natra/cni.log"}


def holds_bandwidth(name: str) -> bool:
    data = json.loads((FIXTURES / name).read_bytes())
    plugins = data.get("plugins", [data])
    return any(p["type"] == "bandwidth" for p in plugins)


def make_bundle(directory: Path, tag: str = "v1") -> Path:
    """A stand-in for dist/natra: an executable and a contents dir."""
    (directory / "_internal").mkdir(parents=True)
    exe = directory / "natra"
    exe.write_text(f"#!/bin/sh\necho natra-{tag}\n")
    exe.chmod(0o755)
    (directory / "_internal" / "lib.so").write_bytes(tag.encode() * 100)
    return directory


def make_host(tmp_path: Path, *fixtures: str) -> Path:
    root = tmp_path / "host"
    conf = root / inst.DEFAULT_CONF_DIR
    conf.mkdir(parents=True)
    for name in fixtures:
        shutil.copyfile(FIXTURES / name, conf / name)
    (conf / "calico-kubeconfig").write_text("# not a CNI config, must be ignored\n")
    return root


def snapshot(root: Path) -> dict[str, object]:
    """Every file and symlink under root with its bytes (or link target) and mode."""
    seen: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            seen[rel] = ("link", os.readlink(path))
        elif path.is_file():
            seen[rel] = ("file", path.read_bytes(), path.stat().st_mode & 0o7777)
    return seen


def runtime_view(root: Path) -> tuple[str, dict]:
    """What a runtime loads: the first config file, as a conflist."""
    conf = root / inst.DEFAULT_CONF_DIR
    name = chaining.active_config(p.name for p in conf.iterdir() if p.is_file())
    data = json.loads((conf / name).read_bytes())
    if not name.endswith(".conflist"):
        data = chaining.conf_to_conflist(data)
    return name, data


def assert_chained(root: Path, original: dict) -> dict:
    name, conflist = runtime_view(root)
    assert name.endswith(".conflist")
    plugins = conflist["plugins"]
    natras = [i for i, p in enumerate(plugins) if p["type"] == "natra"]
    assert len(natras) == 1
    assert not any(p["type"] == "bandwidth" for p in plugins)
    entry = plugins[natras[0]]
    assert entry["capabilities"] == {"bandwidth": True, "io.kubernetes.cri.pod-annotations": True}
    for key, value in DEFAULTS.items():
        assert entry[key] == value
    assert conflist["cniVersion"] == original["cniVersion"]
    assert conflist["name"] == original["name"]
    main = original.get("plugins", [original])[0]
    assert plugins[0] == main
    others = [p for p in plugins if p["type"] != "natra"]
    assert others == [p for p in original.get("plugins", [original]) if p["type"] != "bandwidth"]
    # libcni's view: Natra gets name, cniVersion, prevResult and only the runtimeConfig it declared.
    chain = Chain(conflist, bin_dir="/nonexistent")
    att = Attachment("c1", "/run/netns/x", capability_args={
        "bandwidth": {"IngressRate": 10_000_000, "IngressBurst": 2**32 - 1},
        "portMappings": [], "io.kubernetes.cri.pod-annotations": {"natra.io/width": "2048"}})
    config = chain._plugin_config(entry, att, {"cniVersion": conflist["cniVersion"], "interfaces": []})
    assert set(config["runtimeConfig"]) == {"bandwidth", "io.kubernetes.cri.pod-annotations"}
    settings_ = tuning.cluster_settings(config, env={})
    assert settings_.attach_mode == "auto"
    assert settings_.tuning.window_ns == 100_000_000
    return entry


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("fixture", ALL_FIXTURES)
def test_install_then_uninstall_restores_every_byte(tmp_path, fixture):
    root = make_host(tmp_path, fixture)
    bundle = make_bundle(tmp_path / "bundle")
    before = snapshot(root)
    original = json.loads((FIXTURES / fixture).read_bytes())
    replace = holds_bandwidth(fixture)

    report = inst.install(root, bundle, replace_bandwidth=replace, defaults=DEFAULTS)
    assert report.changed
    assert_chained(root, original)
    once = snapshot(root)
    link = root / "opt/cni/bin/natra"
    assert subprocess.run([link], capture_output=True, text=True, check=True).stdout == "natra-v1\n"

    again = inst.install(root, bundle, replace_bandwidth=replace, defaults=DEFAULTS)
    assert not again.changed
    assert snapshot(root) == once

    inst.uninstall(root)
    assert snapshot(root) == before


@pytest.mark.parametrize("fixture", [n for n in ALL_FIXTURES if holds_bandwidth(n)])
def test_standard_bandwidth_present_refuses_without_replace(tmp_path, fixture):
    root = make_host(tmp_path, fixture)
    before = snapshot(root)
    with pytest.raises(chaining.InstallError, match="--replace-bandwidth"):
        inst.install(root, make_bundle(tmp_path / "bundle"), defaults=DEFAULTS)
    assert snapshot(root) == before


def test_replace_bandwidth_carries_static_limits(tmp_path):
    root = make_host(tmp_path, "30-bridge-bandwidth.conflist")
    report = inst.install(root, None, replace_bandwidth=True, defaults=DEFAULTS)
    _, conflist = runtime_view(root)
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap", "natra"]
    natra = conflist["plugins"][2]
    assert (natra["ingressRate"], natra["ingressBurst"], natra["egressRate"], natra["egressBurst"]) == (
        100_000_000, 50_000_000, 200_000_000, 100_000_000)
    assert any("static limits" in n for n in report.notes)


def test_replace_bandwidth_in_calico_keeps_portmap_order(tmp_path):
    root = make_host(tmp_path, "10-calico.conflist")
    inst.install(root, None, replace_bandwidth=True, defaults={})
    _, conflist = runtime_view(root)
    assert [p["type"] for p in conflist["plugins"]] == ["calico", "portmap", "natra"]
    assert "ingressRate" not in conflist["plugins"][2]


def test_single_plugin_conf_is_shadowed_not_edited(tmp_path):
    root = make_host(tmp_path, "10-mynet.conf")
    conf = root / inst.DEFAULT_CONF_DIR
    original = (conf / "10-mynet.conf").read_bytes()
    inst.install(root, None, defaults=DEFAULTS)
    name, conflist = runtime_view(root)
    assert name == "10-mynet-natra.conflist"
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "natra"]
    assert (conf / "10-mynet.conf").read_bytes() == original
    inst.uninstall(root)
    assert not (conf / "10-mynet-natra.conflist").exists()
    assert runtime_view(root)[0] == "10-mynet.conf"


def test_main_plugin_rewrites_its_config_then_install_rechains(tmp_path):
    """Calico's install-cni rewrites its conflist on restart: Natra's entry is gone."""
    root = make_host(tmp_path, "10-flannel.conflist")
    path = root / inst.DEFAULT_CONF_DIR / "10-flannel.conflist"
    inst.install(root, None, defaults=DEFAULTS)
    rewritten = (FIXTURES / "10-flannel.conflist").read_text().replace('"cbr0"', '"cbr1"').encode()
    path.write_bytes(rewritten)
    report = inst.install(root, None, defaults=DEFAULTS)
    assert report.changed
    _, conflist = runtime_view(root)
    assert conflist["name"] == "cbr1" and [p["type"] for p in conflist["plugins"]][1] == "natra"
    inst.uninstall(root)
    assert path.read_bytes() == rewritten


def test_uninstall_after_a_foreign_edit_takes_only_natra_out(tmp_path):
    root = make_host(tmp_path, "30-bridge-bandwidth.conflist")
    path = root / inst.DEFAULT_CONF_DIR / "30-bridge-bandwidth.conflist"
    inst.install(root, None, replace_bandwidth=True, defaults=DEFAULTS)
    edited = json.loads(path.read_bytes())
    edited["plugins"].append({"type": "tuning", "mtu": 1400})
    path.write_text(json.dumps(edited))
    report = inst.uninstall(root)
    restored = json.loads(path.read_bytes())
    assert [p["type"] for p in restored["plugins"]] == ["bridge", "portmap", "bandwidth", "tuning"]
    original = json.loads((FIXTURES / "30-bridge-bandwidth.conflist").read_bytes())
    assert restored["plugins"][2] == original["plugins"][2]
    assert any("changed since install" in n for n in report.notes)


def test_a_new_network_plugin_moves_natra_with_it(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    conf = root / inst.DEFAULT_CONF_DIR
    inst.install(root, None, defaults=DEFAULTS)
    shutil.copyfile(FIXTURES / "05-cilium.conflist", conf / "05-cilium.conflist")
    inst.install(root, None, defaults=DEFAULTS)
    assert (conf / "10-flannel.conflist").read_bytes() == (FIXTURES / "10-flannel.conflist").read_bytes()
    name, conflist = runtime_view(root)
    assert name == "05-cilium.conflist"
    assert [p["type"] for p in conflist["plugins"]] == ["cilium-cni", "natra"]
    inst.uninstall(root)
    assert (conf / "05-cilium.conflist").read_bytes() == (FIXTURES / "05-cilium.conflist").read_bytes()


def test_changed_defaults_rewrite_the_entry_and_keep_the_first_backup(tmp_path):
    root = make_host(tmp_path, "10-kindnet.conflist")
    before = snapshot(root)
    inst.install(root, None, defaults=DEFAULTS)
    inst.install(root, None, defaults={**DEFAULTS, "width": 2048})
    _, conflist = runtime_view(root)
    assert conflist["plugins"][1]["width"] == 2048
    inst.uninstall(root)
    assert snapshot(root) == before


def test_uninstall_without_record_removes_a_hand_made_entry(tmp_path):
    root = make_host(tmp_path, "20-ptp.conflist")
    path = root / inst.DEFAULT_CONF_DIR / "20-ptp.conflist"
    data = json.loads(path.read_bytes())
    data["plugins"].append({"type": "natra", "capabilities": {"bandwidth": True}})
    path.write_text(json.dumps(data))
    inst.uninstall(root)
    assert [p["type"] for p in json.loads(path.read_bytes())["plugins"]] == ["ptp", "portmap", "tuning"]


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(("content", "message"), [
    ('{"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "ptp"}]}', "cniVersion"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "non-empty"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bandwidth"}]}', "main network plugin"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"ipam": {}}]}', "no 'type'"),
    ('{"cniVersion": "1.0.0", "name": ', "not valid JSON"),
])
def test_configs_a_runtime_would_reject_are_refused_untouched(tmp_path, content, message):
    root = make_host(tmp_path)
    (root / inst.DEFAULT_CONF_DIR / "10-bad.conflist").write_text(content)
    before = snapshot(root)
    with pytest.raises(chaining.InstallError, match=message):
        inst.install(root, None, defaults={})
    assert snapshot(root) == before


def test_no_config_yet_is_a_clear_error(tmp_path):
    root = make_host(tmp_path)
    with pytest.raises(chaining.InstallError, match="install the cluster's network plugin first"):
        inst.install(root, None, defaults={})


@pytest.mark.parametrize("defaults", [{"type": "x"}, {"capabilities": {}}, {"width": 1000},
                                      {"attachMode": "xdp"}, {"window": "forever"}])
def test_defaults_the_plugin_would_reject_fail_at_install(tmp_path, defaults):
    root = make_host(tmp_path, "10-flannel.conflist")
    before = snapshot(root)
    with pytest.raises(chaining.InstallError):
        inst.install(root, None, defaults=defaults)
    assert snapshot(root) == before


def test_a_bundle_without_executable_is_refused(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(chaining.InstallError, match="make node-bundle"):
        inst.install(root, tmp_path / "empty", defaults={})


# ---------------------------------------------------------------- bin dirs and bundle versions


def test_k3s_bin_dir_is_filled_when_present(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    (root / "var/lib/rancher/k3s/data/current/bin").mkdir(parents=True)
    report = inst.install(root, make_bundle(tmp_path / "b"), defaults={})
    assert report.bin_dirs == ["/opt/cni/bin", "/var/lib/rancher/k3s/data/current/bin"]
    for d in report.bin_dirs:
        assert subprocess.run([root / d.lstrip("/") / "natra"], capture_output=True, check=True).stdout
    inst.uninstall(root)
    assert not (root / "var/lib/rancher/k3s/data/current/bin/natra").exists()


def test_upgrade_swaps_the_link_and_keeps_one_previous_version(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    bins = root / "opt/cni/bin"
    for tag in ("v1", "v2", "v3"):
        inst.install(root, make_bundle(tmp_path / tag, tag), defaults={})
        out = subprocess.run([bins / "natra"], capture_output=True, text=True, check=True).stdout
        assert out == f"natra-{tag}\n"
    assert len(list((bins / inst.BUNDLE_DIR_NAME).iterdir())) == inst.KEPT_BUNDLES


def test_a_foreign_natra_file_is_left_on_uninstall(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    bins = root / "opt/cni/bin"
    bins.mkdir(parents=True)
    (bins / "natra").write_text("someone else's\n")
    report = inst.uninstall(root)
    assert (bins / "natra").read_text() == "someone else's\n"
    assert any("did not write" in n for n in report.notes)


# ---------------------------------------------------------------- atomic writes


def test_a_watching_runtime_only_ever_reads_whole_configs(tmp_path):
    """A reader polling the config dir (as runtimes do) while install and
    uninstall alternate must always parse a complete conflist."""
    root = make_host(tmp_path, "10-calico.conflist")
    conf = root / inst.DEFAULT_CONF_DIR
    stop = threading.Event()
    reads, failures = [0], []

    def watch():
        while not stop.is_set():
            for p in conf.iterdir():
                if not p.name.endswith(chaining.CONF_EXTENSIONS) or not p.is_file():
                    continue
                try:
                    json.loads(p.read_bytes())
                    reads[0] += 1
                except FileNotFoundError:
                    pass
                except ValueError as e:
                    failures.append(f"{p.name}: {e}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(40):
            inst.install(root, None, replace_bandwidth=True, defaults={"width": 1024 << (i % 3)})
            inst.uninstall(root)
    finally:
        stop.set()
        watcher.join()
    assert reads[0] > 0 and failures == []
    assert not [p for p in conf.rglob("*") if p.name.endswith(inst.TMP_SUFFIX)]


def test_write_keeps_the_file_mode(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    path = root / inst.DEFAULT_CONF_DIR / "10-flannel.conflist"
    path.chmod(0o600)
    inst.install(root, None, defaults={})
    assert path.stat().st_mode & 0o777 == 0o600
    inst.uninstall(root)
    assert path.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("names", "active"), [
    (["10-flannel.conflist", "99-loopback.conf"], "10-flannel.conflist"),
    (["10-a.conflist", "10-a.conf"], "10-a.conf"),
    (["10-a.conf", "10-a-natra.conflist"], "10-a-natra.conflist"),
    (["calico-kubeconfig", "20-x.json"], "20-x.json"),
    (["20-x.json", ".hidden.conf"], ".hidden.conf"),  # libcni loads dotfiles too
    (["README", "x.conflist.natra-tmp"], None),
])
def test_active_config_is_the_first_cni_file(names, active):
    assert chaining.active_config(names) == active


def test_shadow_sorts_before_the_conf_it_replaces():
    for name in ("10-mynet.conf", "87-podman.conflist.json", "a.json", "10-x-y.conf"):
        assert chaining.shadow_name(name) < name


plugin_types = st.sampled_from(["portmap", "tuning", "firewall", "sbr", "bandwidth"])
main_types = st.sampled_from(["ptp", "bridge", "calico", "flannel", "cilium-cni"])


@st.composite
def conflists(draw):
    main = {"type": draw(main_types), "mtu": draw(st.integers(1280, 9000))}
    rest = draw(st.lists(plugin_types, max_size=4))
    if rest.count("bandwidth") > 1:
        rest = [t for t in rest if t != "bandwidth"] + ["bandwidth"]
    plugins = [main] + [{"type": t, "capabilities": {t: True}} for t in rest]
    return {"cniVersion": draw(st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])), "name": "net",
            "plugins": plugins}


@settings(max_examples=200, deadline=None)
@given(conflists())
def test_unchain_undoes_chain(conflist):
    plan = chaining.chain(conflist, {}, replace_bandwidth=True)
    types = [p["type"] for p in plan.conflist["plugins"]]
    assert types.count("natra") == 1 and "bandwidth" not in types and types[0] != "natra"
    assert chaining.unchain(plan.conflist, plan.replaced) == conflist
    assert chaining.chain(conflist, {}, replace_bandwidth=True) == plan


@settings(max_examples=100, deadline=None)
@given(conflists())
def test_plan_install_then_restore_in_memory(conflist):
    """The decisions alone, on a config dir held in memory: no file is read or written."""
    original = chaining.encode(conflist)
    name = "10-net.conflist"
    empty = chaining.ConfigDir((name,), {name: original})
    plan = chaining.plan_install(empty, DEFAULTS, replace_bandwidth=True, bin_dirs=["opt/cni/bin"])
    assert (plan.source, plan.target, plan.original) == (name, name, original)
    assert plan.write_backup and plan.write_state and plan.write_target
    installed = chaining.ConfigDir((name,), {name: plan.written}, {name: original}, plan.state)
    again = chaining.plan_install(installed, DEFAULTS, replace_bandwidth=True, bin_dirs=["opt/cni/bin"])
    assert again.written == plan.written and again.state == plan.state
    assert not (again.write_backup or again.write_state or again.write_target)
    restore = chaining.plan_restore(plan.state, installed.files, installed.backups)
    assert restore.writes == (chaining.FileWrite(name, original, name),) and restore.config == name
    edited = chaining.encode({**json.loads(plan.written), "name": "edited"})
    restore = chaining.plan_restore(plan.state, {name: edited}, installed.backups)
    assert json.loads(restore.writes[0].data) == {**json.loads(original), "name": "edited"}


def test_is_mounted_reads_mountinfo():
    info = ("36 25 0:32 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700\n"
            "37 25 0:33 / /mnt/with\\040space rw - tmpfs tmpfs rw\n")
    assert inst.is_mounted(Path("/sys/fs/bpf"), "bpf", info)
    assert not inst.is_mounted(Path("/sys/fs/bpf"), "tmpfs", info)
    assert inst.is_mounted(Path("/mnt/with space"), "tmpfs", info)
    assert not inst.is_mounted(Path("/mnt"), "tmpfs", info)


# ---------------------------------------------------------------- bpffs (root)


@pytest.mark.root
def test_mount_bpffs_mounts_once(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting bpffs needs root")
    target = tmp_path / "bpf"
    try:
        assert inst.mount_bpffs_at(target) is True
        assert inst.is_mounted(target, "bpf", Path("/proc/self/mountinfo").read_text())
        assert inst.mount_bpffs_at(target) is False
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_fake_root_never_mounts(tmp_path):
    root = make_host(tmp_path, "10-flannel.conflist")
    report = inst.install(root, None, defaults={}, mount_bpffs=True)
    assert not report.bpffs_mounted
    assert any("not the real root" in n for n in report.notes)


# ---------------------------------------------------------------- command line


def test_cli_takes_everything_from_env(tmp_path, capsys):
    root = make_host(tmp_path, "10-calico.conflist")
    before = snapshot(root)
    defaults_file = tmp_path / "defaults.json"
    defaults_file.write_text(json.dumps(DEFAULTS))
    env = {install_cli.ENV_HOST_ROOT: str(root), install_cli.ENV_BUNDLE: str(make_bundle(tmp_path / "b")),
           install_cli.ENV_DEFAULTS_FILE: str(defaults_file), install_cli.ENV_REPLACE_BANDWIDTH: "true"}
    assert install_cli.run_install([], env) == 0
    assert_chained(root, json.loads((FIXTURES / "10-calico.conflist").read_bytes()))
    assert "changed" in capsys.readouterr().out
    assert install_cli.run_uninstall([], env) == 0
    assert snapshot(root) == before


def test_cli_refusal_exits_1_with_the_reason(tmp_path, capsys):
    root = make_host(tmp_path, "10-calico.conflist")
    code = install_cli.run_install(["--host-root", str(root), "--no-bundle"], {})
    assert code == 1
    assert "--replace-bandwidth" in capsys.readouterr().err


def test_cli_needs_a_bundle_outside_the_node_bundle(tmp_path, capsys):
    root = make_host(tmp_path, "10-flannel.conflist")
    assert install_cli.run_install(["--host-root", str(root)], {}) == 2
    assert "make node-bundle" in capsys.readouterr().err


def test_cli_default_pairs_and_wait(tmp_path):
    root = make_host(tmp_path)
    assert install_cli.run_install(["--host-root", str(root), "--no-bundle", "--wait-for-config", "0.01"],
                                   {}) == 1
    shutil.copyfile(FIXTURES / "10-flannel.conflist", root / inst.DEFAULT_CONF_DIR / "10-flannel.conflist")
    argv = ["--host-root", str(root), "--no-bundle", "--default", "width=2048", "--default",
            "attachMode=tcx", "--wait-for-config", "5"]
    assert install_cli.run_install(argv, {}) == 0
    entry = runtime_view(root)[1]["plugins"][1]
    assert (entry["width"], entry["attachMode"]) == (2048, "tcx")


def test_natra_cli_routes_install_and_uninstall_here(tmp_path, capsys):
    """`natra install` / `natra uninstall` through natra.cli's SUBCOMMANDS table."""
    from natra import cli

    root = make_host(tmp_path, "10-kindnet.conflist")
    before = snapshot(root)
    bundle = make_bundle(tmp_path / "b")
    assert cli.main(["install", "--host-root", str(root), "--bundle", str(bundle)]) == 0
    assert runtime_view(root)[1]["plugins"][1]["type"] == "natra"
    assert cli.main(["uninstall", "--host-root", str(root)]) == 0
    assert snapshot(root) == before
    assert "natra uninstall:" in capsys.readouterr().out
