"""Carrying out what `natra.node.chaining` decides: the only part of the installer with effects.

Owns: where a node keeps its CNI plugins and configuration (the host root, the
config dir, the bin dirs a distribution uses), reading the config dir into a
`chaining.ConfigDir` and writing the plan back, the copy of the node bundle
into each CNI bin dir, the backup of the original bytes and the install record
beside it (in a directory of the config dir, which every runtime skips), the
bpffs mount, and the `Report` an operator reads.
Rules:
- The runtimes watch the config dir: every file they could read is replaced by
  a rename of a complete, fsync'ed temporary file of the same directory whose
  name they ignore.
- Binaries go in before the config names them; the config lets go of them
  before they go away.
- No decision about a conflist is made here: which file, what to write and
  what to restore all come from `natra.node.chaining`.
Must not know: what a conflist holds, the data path, or what Natra's config
keys mean.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from natra.node.chaining import (
    PLUGIN_TYPE,
    ConfigDir,
    InstallError,
    RestorePlan,
    State,
    active_config,
    encode,
    moved,
    plan_install,
    plan_restore,
    without_natra,
)

# Paths on the host, relative to its root.
DEFAULT_CNI_BIN_DIR = "opt/cni/bin"
# Bin dirs some distributions configure their runtime with; filled only when
# the directory is already there (k3s keeps its plugins under its data dir,
# GKE's COS nodes under /home/kubernetes/bin).
OPTIONAL_CNI_BIN_DIRS = ("var/lib/rancher/k3s/data/current/bin", "home/kubernetes/bin")
DEFAULT_CONF_DIR = "etc/cni/net.d"
BPFFS_DIR = "sys/fs/bpf"
# Directories are skipped by every runtime's scan of the config dir, so the
# backup and the state record live in one inside it.
STATE_DIR_NAME = ".natra"
STATE_FILE_NAME = "state.json"
BACKUP_SUFFIX = ".orig"
# The bundle: `<bin>/natra` is a relative symlink into `<bin>/natra.d/<digest>/`.
BUNDLE_DIR_NAME = "natra.d"
BUNDLE_EXECUTABLE = PLUGIN_TYPE  # a runtime runs `<bin dir>/<type>`
DIGEST_CHARS = 16
# Kept versions of the bundle per bin dir: the one in use and the one before,
# so that a plugin process started just before an upgrade finds its files.
KEPT_BUNDLES = 2
# A temporary file name no runtime loads: it ends in none of chaining.CONF_EXTENSIONS.
TMP_SUFFIX = ".natra-tmp"
BPFFS_MAGIC_TYPE = "bpf"
NEW_FILE_MODE = 0o644


# --------------------------------------------------------------------------
# Effects: files, symlinks, mounts.


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` by `data` so a reader sees the old bytes or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def bundle_digest(bundle_dir: Path) -> str:
    """A digest of the bundle's tree: names, executable bits and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(bundle_dir).as_posix()
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"L" + os.readlink(path).encode() + b"\0")
            continue
        h.update(b"X" if os.access(path, os.X_OK) else b"R")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]


def install_bundle(bin_dir: Path, bundle_dir: Path, digest: str) -> bool:
    """Copy the bundle under `bin_dir/natra.d/<digest>` and point `bin_dir/natra` at it.

    Returns whether anything changed. The version directory is complete before
    the symlink names it, and the symlink is swapped by a rename.
    """
    if not (bundle_dir / BUNDLE_EXECUTABLE).is_file():
        raise InstallError(f"bundle {bundle_dir} has no {BUNDLE_EXECUTABLE!r} executable "
                           "(build it with `make node-bundle`)")
    changed = False
    versions = bin_dir / BUNDLE_DIR_NAME
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / digest
    if not final.is_dir():
        tmp = versions / f".{digest}.{os.getpid()}{TMP_SUFFIX}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bundle_dir, tmp, symlinks=True)
        os.replace(tmp, final)
        _fsync_dir(versions)
        changed = True
    link = bin_dir / BUNDLE_EXECUTABLE
    wanted = f"{BUNDLE_DIR_NAME}/{digest}/{BUNDLE_EXECUTABLE}"
    previous = os.readlink(link) if link.is_symlink() else None
    if previous != wanted:
        if link.exists() and not link.is_symlink() and link.is_dir():
            raise InstallError(f"{link} is a directory; remove it before installing Natra")
        tmp_link = bin_dir / f".{BUNDLE_EXECUTABLE}.{os.getpid()}{TMP_SUFFIX}"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(wanted, tmp_link)
        os.replace(tmp_link, link)
        _fsync_dir(bin_dir)
        changed = True
    keep = [digest]
    if previous and previous.startswith(BUNDLE_DIR_NAME + "/"):
        keep.append(previous.split("/")[1])
    for old in versions.iterdir():
        if old.name not in keep[:KEPT_BUNDLES]:
            shutil.rmtree(old, ignore_errors=True)
            changed = True
    return changed


def remove_bundle(bin_dir: Path) -> list[str]:
    """Take Natra's symlink and bundle versions out of `bin_dir`; say what was left alone."""
    notes = []
    link = bin_dir / BUNDLE_EXECUTABLE
    if link.is_symlink():
        if os.readlink(link).startswith(BUNDLE_DIR_NAME + "/"):
            link.unlink()
        else:
            notes.append(f"left {link} alone: it points outside {BUNDLE_DIR_NAME}")
    elif link.exists():
        notes.append(f"left {link} alone: a file Natra's installer did not write")
    shutil.rmtree(bin_dir / BUNDLE_DIR_NAME, ignore_errors=True)
    return notes


def is_mounted(path: Path, fstype: str, mountinfo: str) -> bool:
    """Whether `mountinfo` (the text of /proc/self/mountinfo) has `path` mounted as `fstype`."""
    target = os.path.realpath(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        mount_point = fields[4].replace("\\040", " ")
        if mount_point == target and after and after[0] == fstype:
            return True
    return False


def mount_bpffs_at(path: Path) -> bool:
    """Mount bpffs at `path` unless it is there already; returns whether it mounted."""
    with open("/proc/self/mountinfo") as f:
        if is_mounted(path, BPFFS_MAGIC_TYPE, f.read()):
            return False
    path.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        name = errno.errorcode.get(err, str(err))
        raise InstallError(f"mount bpffs at {path}: {os.strerror(err)} ({name})")
    return True


# --------------------------------------------------------------------------
# The installer.


@dataclass
class Report:
    """What an install or uninstall did, for the operator."""

    config: str | None = None  # host path of the config file written or restored
    changed: bool = False
    bin_dirs: list[str] = field(default_factory=list)
    bpffs_mounted: bool = False
    notes: list[str] = field(default_factory=list)


class Host:
    """Paths of one host, seen from `root` (`/` on the node, a temp dir in tests)."""

    def __init__(self, root: str | os.PathLike, conf_dir: str | None = None):
        self.root = Path(root)
        self.conf_dir = self.path(conf_dir or DEFAULT_CONF_DIR)
        self.state_dir = self.conf_dir / STATE_DIR_NAME

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def is_real_root(self) -> bool:
        return os.path.realpath(self.root) == "/"

    def bin_dirs(self, asked: Iterable[str] | None) -> list[str]:
        if asked:
            return [d.lstrip("/") for d in asked]
        present = [d for d in OPTIONAL_CNI_BIN_DIRS if self.path(d).is_dir()]
        return [DEFAULT_CNI_BIN_DIR, *present]

    # state record and backup
    def read_state(self) -> State | None:
        path = self.state_dir / STATE_FILE_NAME
        if not path.exists():
            return None
        try:
            return State.from_json(json.loads(path.read_bytes()))
        except (ValueError, KeyError, TypeError) as e:
            raise InstallError(f"{path} is damaged ({e}); restore the config by hand from "
                               f"{self.state_dir} and remove that directory") from e

    def write_state(self, state: State) -> None:
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomically(self.state_dir / STATE_FILE_NAME, encode(state.to_json()), mode=0o600)

    def backup_path(self, source: str) -> Path:
        return self.state_dir / (source + BACKUP_SUFFIX)

    def config_names(self) -> list[str]:
        if not self.conf_dir.is_dir():
            return []
        return [p.name for p in self.conf_dir.iterdir() if p.is_file()]

    def read_config_dir(self) -> ConfigDir:
        """The config dir as `natra.node.chaining` decides on it: names, the bytes it reads, the record."""
        names = self.config_names()
        config = ConfigDir(tuple(names), state=self.read_state(), where=str(self.conf_dir))
        wanted = config.wanted()
        files = {n: (self.conf_dir / n).read_bytes() for n in wanted if n in names}
        backups = {n: self.backup_path(n).read_bytes() for n in wanted if self.backup_path(n).exists()}
        return replace(config, files=files, backups=backups)

    def write_config(self, name: str, data: bytes, *, mode_of: str | None) -> Path:
        """Write one file of the config dir, keeping the mode of `mode_of` (a new file: 0o644)."""
        path = self.conf_dir / name
        write_atomically(path, data, mode=_file_mode(self.conf_dir / mode_of) if mode_of else NEW_FILE_MODE)
        return path


def _restore(host: Host, plan: RestorePlan, report: Report) -> None:
    """Carry a restore out: give the runtime back the config Natra was chained from."""
    for write in plan.writes:
        host.write_config(write.name, write.data, mode_of=write.mode_of)
    for name in plan.removes:
        (host.conf_dir / name).unlink()
        _fsync_dir(host.conf_dir)
    if plan.config is not None:
        report.config, report.changed = str(host.conf_dir / plan.config), True
    report.notes.extend(plan.notes)


def install(host_root: str | os.PathLike, bundle_dir: str | os.PathLike | None, *,
            replace_bandwidth: bool = False, defaults: Mapping | None = None,
            cni_bin_dirs: Iterable[str] | None = None, conf_dir: str | None = None,
            mount_bpffs: bool = True) -> Report:
    """Copy the bundle into the CNI bin dirs and chain Natra into the runtime's config.

    `bundle_dir` None installs no binary (the plugin is already on the node's
    bin dirs, e.g. baked into the image). bpffs is mounted only when
    `host_root` is the real root: a fake root has nothing to mount on.
    """
    host = Host(host_root, conf_dir)
    report = Report()
    config = host.read_config_dir()
    active = config.active()
    if moved(config.state, active):
        assert config.state is not None
        report.notes.append(f"the runtime's config moved from {config.state.target} to {active}; "
                            f"restoring {config.state.source} and chaining into {active}")
        _restore(host, plan_restore(config.state, config.files, config.backups), report)
        config = replace(host.read_config_dir(), state=None)
    bin_dirs = host.bin_dirs(cni_bin_dirs)
    plan = plan_install(config, defaults or {}, replace_bandwidth=replace_bandwidth, bin_dirs=bin_dirs)
    report.notes.extend(plan.notes)

    if bundle_dir is not None:
        digest = bundle_digest(Path(bundle_dir))
        for d in bin_dirs:
            if install_bundle(host.path(d), Path(bundle_dir), digest):
                report.changed = True
        report.bin_dirs = ["/" + d for d in bin_dirs]

    if plan.write_backup:
        host.state_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomically(host.backup_path(plan.source), plan.original, mode=0o600)
    if plan.write_state:
        host.write_state(plan.state)
    target_path = host.conf_dir / plan.target
    if plan.write_target:
        host.write_config(plan.target, plan.written, mode_of=plan.source)
        report.changed = True
    report.config = str(target_path)

    if mount_bpffs and host.is_real_root():
        report.bpffs_mounted = mount_bpffs_at(host.path(BPFFS_DIR))
    elif mount_bpffs:
        report.notes.append(f"bpffs not mounted: {host.root} is not the real root")
    return report


def uninstall(host_root: str | os.PathLike, *, cni_bin_dirs: Iterable[str] | None = None,
              conf_dir: str | None = None) -> Report:
    """Give the runtime its original config back, then remove Natra's binaries.

    Without an install record, a Natra entry found in the runtime's config is
    taken out (nothing else changes), so a hand-made install can be undone too.
    bpffs stays mounted: other programs use it.
    """
    host = Host(host_root, conf_dir)
    report = Report()
    config = host.read_config_dir()
    state = config.state
    if state is not None:
        _restore(host, plan_restore(state, config.files, config.backups), report)
    else:
        active = active_config(config.names)
        stripped = without_natra(config.files[active]) if active is not None else None
        if stripped is not None:
            assert active is not None
            path = host.write_config(active, stripped, mode_of=active)
            report.config, report.changed = str(path), True
            report.notes.append(f"no install record: took Natra's entry out of {active}")
    bin_dirs = list(dict.fromkeys([*(state.bin_dirs if state else ()), *host.bin_dirs(cni_bin_dirs)]))
    for d in bin_dirs:
        path = host.path(d)
        if (path / BUNDLE_EXECUTABLE).is_symlink() or (path / BUNDLE_DIR_NAME).exists():
            report.changed = True
        report.notes.extend(remove_bundle(path))
    report.bin_dirs = ["/" + d for d in bin_dirs]
    if host.state_dir.exists():
        shutil.rmtree(host.state_dir)
        report.changed = True
    return report
