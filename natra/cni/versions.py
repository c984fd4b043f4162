"""CNI spec versions Natra speaks and the result shape of each.

Owns: the supported version list, version comparison, and `convert_result`,
which turns a previous result into the shape of the request's version: 0.3.x
and 0.4.0 carry `"version": "4"|"6"` on every IP, 1.0.0 and 1.1.0 do not.
Rule: a converted result keeps every field it had; only `cniVersion` and the
per-IP `version` change. The input is never modified.
Must not know: limits, the kernel, how results are printed.
"""

from __future__ import annotations

import copy
import ipaddress

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
# libcni and skel read a config without cniVersion as the oldest spec.
IMPLICIT_VERSION = "0.1.0"
FIRST_WITHOUT_IP_VERSION = "1.0.0"  # 1.0.0 dropped "version" from ips[]
FIRST_WITH_STATUS_AND_GC = "1.1.0"
FIRST_WITH_CHECK = "0.4.0"


def parse(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid version {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def is_supported(version: str) -> bool:
    return version in SUPPORTED_VERSIONS


def _ip_version(ip_entry: dict) -> str | None:
    address = ip_entry.get("address")
    if not isinstance(address, str):
        return None
    try:
        return str(ipaddress.ip_interface(address).version)
    except ValueError:
        return None


def convert_result(result: dict | None, to_version: str) -> dict:
    """`result` (any supported shape) in the shape of `to_version`; {} becomes a bare result."""
    out = copy.deepcopy(result) if result else {}
    out["cniVersion"] = to_version
    ips = out.get("ips")
    if isinstance(ips, list):
        with_version = not at_least(to_version, FIRST_WITHOUT_IP_VERSION)
        for entry in ips:
            if not isinstance(entry, dict):
                continue
            if with_version:
                family = _ip_version(entry)
                if family is not None:
                    entry["version"] = family
            else:
                entry.pop("version", None)
    return out


def version_info(cni_version: str = LATEST) -> dict:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}
