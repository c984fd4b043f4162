"""Deciding how Natra is chained into a node's CNI configuration, and taken out again.

Owns: which file of the config dir a runtime uses (the lexicographically first
`.conf`, `.conflist` or `.json`, as libcni's `ConfFiles` and every runtime
built on it), the chained conflist with Natra's entry in it (after the main
plugin, or in place of the standard `bandwidth` plugin when asked), the shadow
conflist that stands in for a single-plugin `.conf`, the install record
(`State`) that lets uninstall give back exactly what was there, and, given
what the config dir holds now (a `ConfigDir`), what an install or a restore
must write (`plan_install`, `plan_restore`).
Rules:
- Pure: no file system, no clock, no environment. The caller reads the
  config dir into a `ConfigDir` and carries the plan out (`natra.node.install`).
- The chained conflist is always derived from the original bytes, never from a
  file Natra already edited, so installing twice writes what installing once
  wrote; a single-plugin `.conf` is never edited, it is shadowed by a
  converted conflist that sorts first.
- A config a runtime would reject is refused with an `InstallError` that says
  what to do, before anything is written.
Must not know: paths on the host, the bundle, bpffs, how files are written,
the data path, or what Natra's config keys mean: cluster defaults are copied
into the entry as given, after the plugin's own reader
(`natra.cni.tuning.cluster_settings`) accepted them, so a bad default fails
here and not in every Pod's ADD.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
# libcni.ConfFiles: the extensions a runtime loads from the config dir.
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
CONFLIST_EXTENSION = ".conflist"
STATE_FORMAT = 1
# A `.conf` is shadowed by `<stem>-natra.conflist`: '-' sorts before '.', so
# the shadow comes before the original in the runtime's scan.
SHADOW_SUFFIX = "-natra" + CONFLIST_EXTENSION
JSON_INDENT = 2


class InstallError(Exception):
    """A node Natra cannot be chained into safely; the message says what to do."""


# --------------------------------------------------------------------------
# Names and conflists.


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


def without_natra(data: bytes, replaced: Iterable[dict] = ()) -> bytes | None:
    """The bytes of config `data` with Natra's entry taken out; None if it is not JSON or holds none."""
    try:
        conflist = json.loads(data)
    except ValueError:
        return None
    if not holds_natra(conflist):
        return None
    return encode(unchain(conflist, replaced))


def encode(conflist: dict) -> bytes:
    return (json.dumps(conflist, indent=JSON_INDENT) + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_json(data: bytes, source: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as e:
        raise InstallError(f"{source} is not valid JSON ({e}); the runtime cannot use it either") from e
    if not isinstance(value, dict):
        raise InstallError(f"{source} is not a JSON object")
    return value


# --------------------------------------------------------------------------
# The install record.


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
# Plans: what the config dir holds now -> what to write.


@dataclass(frozen=True)
class ConfigDir:
    """What the config dir holds, as far as a decision reads it.

    `names` are the plain files in it; `files` the bytes of the ones a
    decision may read (the active config and the recorded source and target);
    `backups` the saved original bytes by source name; `state` the install
    record, if any; `where` names the directory in messages.
    """

    names: tuple[str, ...]
    files: Mapping[str, bytes] = field(default_factory=dict)
    backups: Mapping[str, bytes] = field(default_factory=dict)
    state: State | None = None
    where: str = "the config dir"

    def active(self) -> str:
        """The runtime's config; an `InstallError` when there is none yet."""
        active = active_config(self.names)
        if active is None:
            raise InstallError(f"no CNI config in {self.where}: install the cluster's network plugin "
                               "first (Natra chains after it)")
        return active

    def wanted(self) -> list[str]:
        """The names whose bytes (and backups) a plan may read."""
        recorded = [self.state.source, self.state.target] if self.state else []
        return list(dict.fromkeys(n for n in [active_config(self.names), *recorded] if n))


def moved(state: State | None, active: str) -> bool:
    """Whether the runtime's config is now another file than the one Natra was chained into."""
    return state is not None and state.target != active and state.source != active


@dataclass(frozen=True)
class FileWrite:
    name: str  # in the config dir
    data: bytes
    mode_of: str | None = None  # keep this file's mode; None: 0o644


@dataclass(frozen=True)
class RestorePlan:
    """How to give the runtime back the config Natra was chained from."""

    writes: tuple[FileWrite, ...] = ()
    removes: tuple[str, ...] = ()
    config: str | None = None  # the file handed back, when there is one
    notes: tuple[str, ...] = ()


def plan_restore(state: State, files: Mapping[str, bytes], backups: Mapping[str, bytes]) -> RestorePlan:
    """Undo the install `state` records, given the config dir's `files` and `backups`."""
    backup = backups.get(state.source)
    if state.source != state.target:  # a shadow: the .conf was never edited, the shadow goes
        writes, notes = (), ()
        if state.source not in files and backup is not None:
            writes = (FileWrite(state.source, backup),)
            notes = (f"{state.source} had gone; restored it from the backup",)
        removes = (state.target,) if state.target in files else ()
        return RestorePlan(writes, removes, state.source, notes)
    current = files.get(state.target)
    if current is None:
        return RestorePlan(notes=(f"{state.target} is gone; nothing to restore",))
    if sha256(current) == state.written_sha256 and backup is not None:
        return RestorePlan((FileWrite(state.target, backup, state.target),), (), state.target)
    stripped = without_natra(current, state.replaced)
    if stripped is not None:
        return RestorePlan((FileWrite(state.target, stripped, state.target),), (), state.target,
                           (f"{state.target} changed since install: took Natra's entry out instead of "
                            "restoring the backup",))
    try:
        json.loads(current)
    except ValueError:
        return RestorePlan(notes=(f"{state.target} changed since install and is not JSON; left alone",))
    return RestorePlan(notes=(f"{state.target} changed since install and holds no Natra entry; left alone",))


@dataclass(frozen=True)
class InstallPlan:
    """What an install writes into the config dir, in order: backup, record, target."""

    source: str  # the runtime's config Natra is chained from
    target: str  # the file Natra writes (source, or its shadow)
    original: bytes  # source's bytes before Natra: the backup
    written: bytes  # the chained conflist
    state: State  # the record to keep
    write_backup: bool
    write_state: bool
    write_target: bool
    notes: tuple[str, ...] = ()


def _original_of(config: ConfigDir, state: State | None, active: str) -> tuple[str, bytes, list[str]]:
    """The runtime's config as it was before Natra: (file name, bytes, notes)."""
    if state is None or state.target != active:
        return active, config.files[active], []
    backup = config.backups.get(state.source)
    if state.source != state.target:  # a shadow: Natra never edits the .conf it stands in for
        data = config.files.get(state.source, backup)
        if data is None:
            raise InstallError(f"{state.source} and its backup are both gone; uninstall, then install again")
        return state.source, data, []
    current = config.files[active]
    if sha256(current) == state.written_sha256 and backup is not None:
        return state.source, backup, []
    return active, current, [f"{active} changed since Natra was installed; chaining into its new content"]


def plan_install(config: ConfigDir, defaults: Mapping, *, replace_bandwidth: bool,
                 bin_dirs: Iterable[str]) -> InstallPlan:
    """Natra chained into the runtime's config of `config`, recorded with `bin_dirs` (host-relative).

    The runtime's config must be the file the record names, or there must be no
    record (`moved` says when the caller restores first and plans without it).
    """
    active = config.active()
    state = config.state
    if state is not None and state.source == active and state.source != state.target:
        # the shadow is gone but its .conf is back in front: chain it again
        state = None
    source, original, notes = _original_of(config, state, active)
    parsed = load_json(original, source)
    if holds_natra(parsed):
        notes.append(f"{source} named {PLUGIN_TYPE!r} in a form this installer did not write; "
                     "re-chaining from its content without that entry")
        parsed = unchain(parsed, state.replaced if state else ())
        original = encode(parsed)
    if is_conflist_name(source):
        base = parsed
        target = source
    else:
        base = conf_to_conflist(parsed)
        target = shadow_name(source)
        if target in config.names and (state is None or state.target != target):
            raise InstallError(f"{target} exists and was not written by Natra; cannot shadow {source}")
        notes.append(f"{source} is a single-plugin config: wrote {target}, which sorts before it, "
                     "as the conflist with Natra; the original is untouched")
    plan = chain(base, defaults, replace_bandwidth=replace_bandwidth, source=source)
    notes.extend(plan.notes)
    written = encode(plan.conflist)
    bin_dirs = tuple(bin_dirs)
    new_state = State(source, target, sha256(written), sha256(original), plan.replaced,
                      tuple(sorted(set(bin_dirs) | set(state.bin_dirs if state else ()))))
    return InstallPlan(
        source, target, original, written, new_state,
        write_backup=config.backups.get(source) != original,
        write_state=state != new_state,
        write_target=config.files.get(target) != written,
        notes=tuple(notes))
