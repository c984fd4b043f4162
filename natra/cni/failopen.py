"""The fail-open record: which Pod asked for a limit and is NOT limited, why, and since when.

Owns: one small JSON file per container under `<stateDir>/fail-open/`
(Settings.state_dir, default /run/natra/cni): the Pod's identity, for each
direction it asked to limit and does not have limited the cause (a label from
CAUSES) and the message the log line carried, and when it first failed open
(`since_ns`, wall clock, kept across repeated ADDs). The executor writes it on
a failed-open ADD, removes it on DEL and on an ADD that limits everything
asked, and GC removes records of containers no longer valid. `natra status`,
`natra top`, the exporter and the page read it (natra.node.observe).
Rule: writing replaces the file atomically (temp file + rename); reading a
missing or malformed record gives None, never an exception. A record in the
older format (one line of text, the cause) reads as cause "unknown" with the
direction "unknown".
Must not know: the kernel, CNI commands, how the views show it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

FAIL_OPEN_DIR = "fail-open"  # under the state dir: one file per failed-open container
FORMAT = 1
UNKNOWN = "unknown"
# Cause label -> what it means. Labels are metric label values (natra_fail_open_total{cause}).
CAUSES = {
    "invalid_annotation": "a kubernetes.io/{ingress,egress}-bandwidth annotation Natra cannot read",
    "unrepresentable_limits": "limits the data path cannot represent",
    "no_host_interface": "prevResult lists no host-side interface for the Pod",
    "peer_check": "the Pod's interface or its host peer cannot be found (netns gone, prevResult wrong)",
    "datapath_unavailable": "natra.kernel.datapath cannot be imported (broken install)",
    "datapath": "installing the data path failed (bpffs, BPF object, verifier, attach, qdiscs)",
    "unexpected": "an unforeseen error in the plugin",
    UNKNOWN: "a record written by an older Natra",
}


@dataclass(frozen=True)
class Record:
    container_id: str
    pod: str = ""  # namespace/name (CNI_ARGS)
    pod_uid: str = ""
    ifname: str = ""
    directions: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {cause, message}
    since_ns: int = 0  # wall clock, ns: the first failed-open ADD
    updated_ns: int = 0  # wall clock, ns: the last one

    def to_json(self) -> dict:
        return {"format": FORMAT, "container_id": self.container_id, "pod": self.pod,
                "pod_uid": self.pod_uid, "ifname": self.ifname, "directions": self.directions,
                "since_ns": self.since_ns, "updated_ns": self.updated_ns}


def path(state_dir: str, container_id: str) -> str:
    return os.path.join(state_dir, FAIL_OPEN_DIR, container_id)


def decode(text: str, container_id: str) -> Record | None:
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # the older format: the cause as one line of text
        return Record(container_id, directions={UNKNOWN: {"cause": UNKNOWN, "message": text}})
    dirs = data.get("directions")
    dirs = {str(k): {"cause": str(v.get("cause", UNKNOWN)), "message": str(v.get("message", ""))}
            for k, v in dirs.items() if isinstance(v, dict)} if isinstance(dirs, dict) else {}

    def number(key: str) -> int:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return Record(container_id, str(data.get("pod", "")), str(data.get("pod_uid", "")),
                  str(data.get("ifname", "")), dirs, number("since_ns"), number("updated_ns"))


def read(state_dir: str, container_id: str) -> Record | None:
    try:
        with open(path(state_dir, container_id)) as f:
            return decode(f.read(), container_id)
    except (OSError, UnicodeDecodeError):
        return None


def read_all(state_dir: str) -> list[Record]:
    """Every record under `state_dir` (none when the directory does not exist)."""
    try:
        names = sorted(os.listdir(os.path.join(state_dir, FAIL_OPEN_DIR)))
    except OSError:
        return []
    return [r for r in (read(state_dir, n) for n in names if not n.startswith(".")) if r is not None]


def write(state_dir: str, record: Record) -> None:
    """Replace the record atomically. Raises OSError (the caller decides whether that matters)."""
    target = path(state_dir, record.container_id)
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), f".{record.container_id}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record.to_json(), f, sort_keys=True)
        f.write("\n")
    os.replace(tmp, target)


def clear(state_dir: str, container_id: str) -> None:
    try:
        os.unlink(path(state_dir, container_id))
    except OSError:
        pass


def gc(state_dir: str, valid: set[str]) -> int:
    """Remove the records of containers not in `valid`; how many went."""
    directory = os.path.join(state_dir, FAIL_OPEN_DIR)
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name not in valid:
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed
