"""Chaining Natra into a node's CNI configuration, and taking it out again.

Owns: where a node keeps its CNI plugins and configuration, which file of the
config dir a runtime uses (the lexicographically first `.conf`, `.conflist` or
`.json`, as libcni's `ConfFiles` and every runtime built on it), the chained
conflist with Natra's entry in it (after the main plugin, or in place of the
standard `bandwidth` plugin when asked), the copy of the node bundle into each
CNI bin dir, a backup of the original bytes and a small state record so that
`uninstall` gives back exactly what was there, and the bpffs mount.

Rules:
- The runtimes watch the config dir: every file they could read is replaced by
  a rename of a complete, fsync'ed temporary file of the same directory whose
  name they ignore; a single-plugin `.conf` is never edited, it is shadowed by
  a converted conflist that sorts first and is removed on uninstall.
- The chained conflist is always derived from the original bytes, never from a
  file Natra already edited, so installing twice writes what installing once
  wrote.
- Binaries go in before the config names them; the config lets go of them
  before they go away.
- The part that decides (the `chain` / `unchain` / `active_config` functions)
  touches no file system; the effects below it carry the decision out.

Must not know: the data path, or what Natra's config keys mean: cluster
defaults are copied into the entry as given, after the plugin's own reader
(`natra.cni.tuning.cluster_settings`) accepted them, so a bad default fails
here and not in every Pod's ADD.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from natra.cni.errors import CniError
from natra.cni.tuning import cluster_settings
from natra.cni.versions import SUPPORTED_VERSIONS

PLUGIN_TYPE = "natra"
STANDARD_BANDWIDTH_TYPE = "bandwidth"
CAPABILITIES = {"bandwidth": True, "io.kubernetes.cri.pod-annotations": True}
# The four static limits the standard plugin reads from its own entry; Go
# decodes JSON keys case-insensitively, so any spelling of these counts.
STATIC_LIMIT_KEYS = ("ingressrate", "ingressburst", "egressrate", "egressburst")
# Keys of the standard plugin's entry Natra does not implement: reported when
# a replaced entry carries them, never silently dropped without a word.
UNCARRIED_BANDWIDTH_KEYS = ("shapedsubnets", "unshapedsubnets")
# Keys a runtime owns in a plugin entry; cluster defaults may not set them.
RESERVED_ENTRY_KEYS = frozenset({"type", "name", "cniversion", "capabilities", "runtimeconfig",
                                 "prevresult", "args"})

# Paths on the host, relative to its root.
DEFAULT_CNI_BIN_DIR = "opt/cni/bin"
# Bin dirs some distributions configure their runtime with; filled only when
# the directory is already there (k3s keeps its plugins under its data dir,
# GKE's COS nodes under /home/kubernetes/bin).
OPTIONAL_CNI_BIN_DIRS = ("var/lib/rancher/k3s/data/current/bin", "home/kubernetes/bin")
DEFAULT_CONF_DIR = "etc/cni/net.d"
BPFFS_DIR = "sys/fs/bpf"
# libcni.ConfFiles: the extensions a runtime loads from the config dir.
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
CONFLIST_EXTENSION = ".conflist"
# Directories are skipped by every runtime's scan of the config dir, so the
# backup and the state record live in one inside it.
STATE_DIR_NAME = ".natra"
STATE_FILE_NAME = "state.json"
BACKUP_SUFFIX = ".orig"
STATE_FORMAT = 1
# A `.conf` is shadowed by `<stem>-natra.conflist`: '-' sorts before '.', so
# the shadow comes before the original in the runtime's scan.
SHADOW_SUFFIX = "-natra" + CONFLIST_EXTENSION
# The bundle: `<bin>/natra` is a relative symlink into `<bin>/natra.d/<digest>/`.
BUNDLE_DIR_NAME = "natra.d"
BUNDLE_EXECUTABLE = "natra"
DIGEST_CHARS = 16
# Kept versions of the bundle per bin dir: the one in use and the one before,
# so that a plugin process started just before an upgrade finds its files.
KEPT_BUNDLES = 2
# A temporary file name no runtime loads: it ends in none of CONF_EXTENSIONS.
TMP_SUFFIX = ".natra-tmp"
BPFFS_MAGIC_TYPE = "bpf"
JSON_INDENT = 2


class InstallError(Exception):
    """A node Natra cannot be chained into safely; the message says what to do."""


# --------------------------------------------------------------------------
# Decisions: pure functions on conflists and names.


def active_config(names: Iterable[str]) -> str | None:
    """The config file a runtime uses: the first by byte order with a CNI extension."""
    candidates = sorted(n for n in names if n.endswith(CONF_EXTENSIONS))  # libcni skips no dotfile
    return candidates[0] if candidates else None


def is_conflist_name(name: str) -> bool:
    return name.endswith(CONFLIST_EXTENSION)


def shadow_name(conf_name: str) -> str:
    """The conflist that stands in for a single-plugin `.conf`/`.json` and sorts before it."""
    stem = conf_name.rsplit(".", 1)[0]
    return stem + SHADOW_SUFFIX


def conf_to_conflist(conf: dict) -> dict:
    """A single-plugin config as the one-plugin list libcni makes of it."""
    if not isinstance(conf.get("type"), str):
        raise InstallError("single-plugin config has no 'type'; a runtime would reject it too")
    conflist = {"cniVersion": conf.get("cniVersion", ""), "name": conf.get("name", ""), "plugins": [conf]}
    return conflist


def _lower_keys(entry: Mapping) -> dict[str, str]:
    return {k.lower(): k for k in entry}


def natra_entry(defaults: Mapping, static_limits: Mapping | None = None) -> dict:
    """Natra's plugin entry: its type, the capabilities, the cluster defaults, carried limits."""
    bad = sorted(k for k in defaults if k.lower() in RESERVED_ENTRY_KEYS)
    if bad:
        raise InstallError(f"cluster defaults may not set {', '.join(bad)}: the installer and the "
                           "runtime own those keys")
    entry: dict = {"type": PLUGIN_TYPE, "capabilities": dict(CAPABILITIES)}
    entry.update(copy.deepcopy(dict(defaults)))
    entry.update(static_limits or {})
    try:  # the plugin's own reader: a default it rejects would fail every Pod's ADD
        cluster_settings(entry, env={})
    except CniError as e:
        raise InstallError(f"cluster defaults rejected by the plugin: {e.msg}: {e.details}") from e
    return entry


def _check_conflist(conflist: object, source: str) -> dict:
    if not isinstance(conflist, dict) or not isinstance(conflist.get("plugins"), list) \
            or not conflist["plugins"]:
        raise InstallError(f"{source}: not a conflist with a non-empty 'plugins' list")
    for i, plugin in enumerate(conflist["plugins"]):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise InstallError(f"{source}: plugin {i} has no 'type'")
    version = conflist.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise InstallError(f"{source}: cniVersion {version!r} is not one Natra speaks "
                           f"({', '.join(SUPPORTED_VERSIONS)}); a chained plugin needs 0.3.0 or later")
    if conflist["plugins"][0]["type"] in (PLUGIN_TYPE, STANDARD_BANDWIDTH_TYPE):
        raise InstallError(f"{source}: the first plugin is {conflist['plugins'][0]['type']!r}, "
                           "not a main network plugin that creates the Pod's interface")
    return conflist


@dataclass(frozen=True)
class ChainPlan:
    """What chaining decided: the conflist to write and what it took out."""

    conflist: dict
    replaced: tuple[dict, ...] = ()  # standard bandwidth entries taken out, in order
    notes: tuple[str, ...] = ()


def chain(original: dict, defaults: Mapping, *, replace_bandwidth: bool,
          source: str = "conflist") -> ChainPlan:
    """Natra chained into `original` (which must not hold Natra yet).

    Natra goes right after the main plugin, so the previous result it reads is
    the main plugin's own. With `replace_bandwidth` it takes the place of the
    first standard `bandwidth` entry and carries over its static limits; without
    it a standard `bandwidth` entry makes chaining fail: both plugins would get
    every Pod's limits, and the standard plugin's queue in front of Natra would
    undo what Natra is for.
    """
    conflist = copy.deepcopy(_check_conflist(original, source))
    plugins = conflist["plugins"]
    if any(p["type"] == PLUGIN_TYPE for p in plugins):
        raise InstallError(f"{source}: already holds a {PLUGIN_TYPE!r} entry")
    bandwidth_at = [i for i, p in enumerate(plugins) if p["type"] == STANDARD_BANDWIDTH_TYPE]
    notes: list[str] = []
    if bandwidth_at and not replace_bandwidth:
        raise InstallError(
            f"{source} already chains the standard 'bandwidth' plugin: with Natra next to it every "
            "limited Pod would be shaped twice and its queue would stay in front of Natra. Run with "
            "--replace-bandwidth (Natra takes its place, keeps its static limits, and uninstall puts it "
            "back), or remove it from the conflist yourself.")
    if not bandwidth_at:
        plugins.insert(1, natra_entry(defaults))
        return ChainPlan(conflist, (), tuple(notes))
    replaced = tuple(plugins[i] for i in bandwidth_at)
    first = replaced[0]
    keys = _lower_keys(first)
    static = {keys[k]: first[keys[k]] for k in STATIC_LIMIT_KEYS if k in keys}
    if static:
        notes.append(f"carried the standard plugin's static limits over: {', '.join(sorted(static))}")
    dropped = sorted(keys[k] for k in UNCARRIED_BANDWIDTH_KEYS if k in keys)
    if dropped:
        notes.append(f"the standard plugin's {', '.join(dropped)} have no Natra equivalent and are not "
                     "applied while Natra replaces it")
    if len(replaced) > 1:
        notes.append(f"{len(replaced)} standard bandwidth entries replaced by one Natra entry")
    position = bandwidth_at[0]
    kept = [p for i, p in enumerate(plugins) if i not in bandwidth_at]
    kept.insert(position, natra_entry(defaults, static))
    conflist["plugins"] = kept
    notes.append(f"replaced the standard bandwidth plugin at position {position} of the chain")
    return ChainPlan(conflist, replaced, tuple(notes))


def unchain(conflist: dict, replaced: Iterable[dict] = ()) -> dict:
    """`conflist` without Natra, the replaced bandwidth entries back where Natra sat."""
    result = copy.deepcopy(conflist)
    plugins = result.get("plugins", [])
    positions = [i for i, p in enumerate(plugins) if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE]
    if not positions:
        return result
    kept = [p for i, p in enumerate(plugins) if i not in positions]
    kept[positions[0]:positions[0]] = [copy.deepcopy(p) for p in replaced]
    result["plugins"] = kept
    return result


def holds_natra(conflist: object) -> bool:
    return isinstance(conflist, dict) and any(
        isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in conflist.get("plugins", []))


def encode(conflist: dict) -> bytes:
    return (json.dumps(conflist, indent=JSON_INDENT) + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class State:
    """What an install left on the node, so uninstall can take exactly that back.

    `source` is the runtime's config file Natra was chained from, `target` the
    file Natra wrote (the same file, or the shadow of a `.conf`); the backup of
    `source`'s original bytes sits beside the state record.
    """

    source: str  # file name in the config dir
    target: str  # file name in the config dir
    written_sha256: str  # of the bytes Natra wrote to target
    original_sha256: str  # of source's bytes before Natra
    replaced: tuple[dict, ...] = ()
    bin_dirs: tuple[str, ...] = ()  # host-relative

    def to_json(self) -> dict:
        return {"format": STATE_FORMAT, "source": self.source, "target": self.target,
                "writtenSha256": self.written_sha256, "originalSha256": self.original_sha256,
                "replaced": list(self.replaced), "binDirs": list(self.bin_dirs)}

    @classmethod
    def from_json(cls, data: dict) -> State:
        if data.get("format") != STATE_FORMAT:
            raise InstallError(f"state record format {data.get('format')!r} unknown; "
                               f"this installer writes {STATE_FORMAT}")
        return cls(data["source"], data["target"], data["writtenSha256"], data["originalSha256"],
                   tuple(data.get("replaced", ())), tuple(data.get("binDirs", ())))


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


def _load_json(data: bytes, source: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as e:
        raise InstallError(f"{source} is not valid JSON ({e}); the runtime cannot use it either") from e
    if not isinstance(value, dict):
        raise InstallError(f"{source} is not a JSON object")
    return value


def _original_of(host: Host, state: State | None, active: str) -> tuple[str, bytes, list[str]]:
    """The runtime's config as it was before Natra: (file name, bytes, notes)."""
    notes: list[str] = []
    if state is None or state.target != active:
        return active, (host.conf_dir / active).read_bytes(), notes
    backup = host.backup_path(state.source)
    if state.source != state.target:  # a shadow: Natra never edits the .conf it stands in for
        source = host.conf_dir / state.source
        return state.source, (source.read_bytes() if source.exists() else backup.read_bytes()), notes
    current = (host.conf_dir / active).read_bytes()
    if sha256(current) == state.written_sha256 and backup.exists():
        return state.source, backup.read_bytes(), notes
    notes.append(f"{active} changed since Natra was installed; chaining into its new content")
    return active, current, notes


def _restore(host: Host, state: State, report: Report) -> None:
    """Give the runtime back the config Natra was chained from."""
    target = host.conf_dir / state.target
    backup = host.backup_path(state.source)
    if state.source != state.target:
        source = host.conf_dir / state.source
        if not source.exists() and backup.exists():
            write_atomically(source, backup.read_bytes(), mode=0o644)
            report.notes.append(f"{state.source} had gone; restored it from the backup")
        if target.exists():
            target.unlink()
            _fsync_dir(host.conf_dir)
        report.config, report.changed = str(source), True
        return
    if not target.exists():
        report.notes.append(f"{target} is gone; nothing to restore")
        return
    current = target.read_bytes()
    if sha256(current) == state.written_sha256 and backup.exists():
        write_atomically(target, backup.read_bytes(), mode=_file_mode(target))
        report.config, report.changed = str(target), True
        return
    try:
        conflist = json.loads(current)
    except ValueError:
        report.notes.append(f"{target} changed since install and is not JSON; left alone")
        return
    if holds_natra(conflist):
        write_atomically(target, encode(unchain(conflist, state.replaced)), mode=_file_mode(target))
        report.config, report.changed = str(target), True
        report.notes.append(f"{target} changed since install: took Natra's entry out instead of "
                            "restoring the backup")
    else:
        report.notes.append(f"{target} changed since install and holds no Natra entry; left alone")


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
    names = host.config_names()
    active = active_config(names)
    if active is None:
        raise InstallError(f"no CNI config in {host.conf_dir}: install the cluster's network plugin "
                           "first (Natra chains after it)")
    state = host.read_state()
    if state is not None and state.target != active and state.source != active:
        report.notes.append(f"the runtime's config moved from {state.target} to {active}; "
                            f"restoring {state.source} and chaining into {active}")
        _restore(host, state, report)
        state = None
        names = host.config_names()
        active = active_config(names)
        assert active is not None
    if state is not None and state.source == active and state.source != state.target:
        # the shadow is gone but its .conf is back in front: chain it again
        state = None
    source, original, notes = _original_of(host, state, active)
    report.notes.extend(notes)
    parsed = _load_json(original, source)
    if holds_natra(parsed):
        report.notes.append(f"{source} named {PLUGIN_TYPE!r} in a form this installer did not write; "
                            "re-chaining from its content without that entry")
        parsed = unchain(parsed, state.replaced if state else ())
        original = encode(parsed)
    if is_conflist_name(source):
        base = parsed
        target = source
    else:
        base = conf_to_conflist(parsed)
        target = shadow_name(source)
        if target in names and (state is None or state.target != target):
            raise InstallError(f"{target} exists and was not written by Natra; cannot shadow {source}")
        report.notes.append(f"{source} is a single-plugin config: wrote {target}, which sorts before it, "
                            "as the conflist with Natra; the original is untouched")
    plan = chain(base, defaults or {}, replace_bandwidth=replace_bandwidth, source=source)
    report.notes.extend(plan.notes)
    written = encode(plan.conflist)

    bin_dirs = host.bin_dirs(cni_bin_dirs)
    if bundle_dir is not None:
        digest = bundle_digest(Path(bundle_dir))
        for d in bin_dirs:
            if install_bundle(host.path(d), Path(bundle_dir), digest):
                report.changed = True
        report.bin_dirs = ["/" + d for d in bin_dirs]

    backup = host.backup_path(source)
    if not backup.exists() or backup.read_bytes() != original:
        host.state_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomically(backup, original, mode=0o600)
    new_state = State(source, target, sha256(written), sha256(original), plan.replaced,
                      tuple(sorted(set(bin_dirs) | set(state.bin_dirs if state else ()))))
    if state != new_state:
        host.write_state(new_state)
    target_path = host.conf_dir / target
    if not target_path.exists() or target_path.read_bytes() != written:
        mode = _file_mode(host.conf_dir / source)
        write_atomically(target_path, written, mode=mode)
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
    state = host.read_state()
    if state is not None:
        _restore(host, state, report)
    else:
        active = active_config(host.config_names())
        if active is not None:
            path = host.conf_dir / active
            try:
                conflist = json.loads(path.read_bytes())
            except ValueError:
                conflist = None
            if holds_natra(conflist):
                write_atomically(path, encode(unchain(conflist)), mode=_file_mode(path))
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
