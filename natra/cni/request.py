"""One CNI call as data: environment plus stdin turned into a validated Request.

Owns: the table of environment variables each command needs (as the spec and
libcni's skel require them), CNI_ARGS parsing (pairs in any order), the
container ID and interface name rules of the spec, the stdin size limit, JSON
decoding and the version check.
Rule: anything wrong here is a protocol error (CniError with the spec's code);
nothing here reads the kernel, files or the clock.
Must not know: limits, tuning, the data path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from natra.cni import versions
from natra.cni.errors import CniError, Kind

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Which variables each command must have (libcni's skel: CNI_NETNS is optional
# on DEL because the namespace may already be gone).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
# Commands whose config must name a version that has them.
MIN_VERSION_FOR = {"CHECK": versions.FIRST_WITH_CHECK, "GC": versions.FIRST_WITH_STATUS_AND_GC,
                   "STATUS": versions.FIRST_WITH_STATUS_AND_GC}

# Network config plus prevResult plus every Pod annotation: Kubernetes caps all
# annotations of a Pod at 256 KiB, so 4 MiB is far above any honest request
# and still small enough to refuse a runaway writer cleanly.
MAX_STDIN_BYTES = 4 * 1024 * 1024
# Linux IFNAMSIZ is 16 including the terminating NUL.
MAX_IFNAME_LEN = 15
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IFNAME_FORBIDDEN = re.compile(r"[/:\s]")


@dataclass(frozen=True)
class Request:
    """A understood CNI call. `config` is the plugin's network config as sent."""

    command: str
    cni_version: str
    config: dict = field(default_factory=dict)
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)  # CNI_ARGS
    path: str = ""
    warnings: tuple[str, ...] = ()  # understood, but worth a log line

    @property
    def prev_result(self) -> dict | None:
        prev = self.config.get("prevResult")
        return prev if isinstance(prev, dict) else None

    @property
    def runtime_config(self) -> dict:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}

    @property
    def pod(self) -> str:
        ns, name = self.args.get("K8S_POD_NAMESPACE", ""), self.args.get("K8S_POD_NAME", "")
        return f"{ns}/{name}" if ns or name else ""


def parse_cni_args(text: str) -> tuple[dict[str, str], list[str]]:
    """'K8S_POD_NAME=a;IgnoreUnknown=1' -> ({...}, warnings). Order does not matter."""
    args: dict[str, str] = {}
    warnings: list[str] = []
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            warnings.append(f"CNI_ARGS: ignored malformed pair {pair!r}")
            continue
        args[key] = value
    return args, warnings


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise CniError.of(Kind.UNKNOWN_CONTAINER, "missing containerID")
    if _CONTAINER_ID.fullmatch(container_id) is None:
        raise CniError.of(Kind.INVALID_ENVIRONMENT, "invalid characters in containerID",
                          f"{container_id!r} must start with a letter or digit and contain only "
                          "letters, digits, '_', '.' and '-'")


def validate_ifname(ifname: str) -> None:
    problem = None
    if not ifname:
        problem = "interface name is empty"
    elif len(ifname) > MAX_IFNAME_LEN:
        problem = f"interface name is too long (at most {MAX_IFNAME_LEN} characters)"
    elif ifname in (".", ".."):
        problem = "interface name is . or .."
    elif _IFNAME_FORBIDDEN.search(ifname):
        problem = "interface name contains / or : or whitespace"
    if problem:
        raise CniError.of(Kind.INVALID_ENVIRONMENT, problem, f"CNI_IFNAME={ifname!r}")


def _decode(stdin: bytes) -> dict:
    if len(stdin) > MAX_STDIN_BYTES:
        raise CniError.of(Kind.DECODE_FAILURE, "network config too large",
                          f"stdin has {len(stdin)} bytes, the limit is {MAX_STDIN_BYTES}")
    try:
        config = json.loads(stdin.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniError.of(Kind.DECODE_FAILURE, "cannot decode network config on stdin", str(exc)) from exc
    except RecursionError as exc:  # e.g. a thousand nested '[': never a traceback
        raise CniError.of(Kind.DECODE_FAILURE, "cannot decode network config on stdin",
                          "JSON nested too deeply") from exc
    if not isinstance(config, dict):
        raise CniError.of(Kind.DECODE_FAILURE, "network config must be a JSON object",
                          f"got a JSON {type(config).__name__}")
    return config


def _config_version(config: dict) -> str:
    version = config.get("cniVersion", "")
    if not isinstance(version, str):
        raise CniError.of(Kind.DECODE_FAILURE, "cniVersion must be a string", repr(version))
    return version or versions.IMPLICIT_VERSION


def _version_request(stdin: bytes) -> Request:
    """VERSION answers whatever the caller speaks: it is how a caller finds out."""
    try:
        version = _config_version(_decode(stdin)) if stdin.strip() else versions.LATEST
    except CniError:
        version = versions.LATEST
    return Request(command="VERSION", cni_version=version if versions.is_supported(version)
                   else versions.LATEST)


def parse_command(env: Mapping[str, str]) -> str:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError.of(Kind.INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CniError.of(Kind.INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}",
                          f"expected one of {', '.join(COMMANDS)}")
    return command


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """The Request, or CniError with the spec's code. VERSION accepts empty stdin."""
    command = parse_command(env)
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError.of(Kind.INVALID_ENVIRONMENT,
                          f"required env variables [{','.join(missing)}] missing",
                          f"CNI_COMMAND={command} needs {', '.join(REQUIRED_ENV[command])}")
    if command == "VERSION":
        return _version_request(stdin)
    config = _decode(stdin)
    version = _config_version(config)
    if not versions.is_supported(version):
        raise CniError.of(Kind.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                          f"config is {version!r}, plugin supports {list(versions.SUPPORTED_VERSIONS)}")
    if command in MIN_VERSION_FOR and not versions.at_least(version, MIN_VERSION_FOR[command]):
        raise CniError.of(Kind.INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                          f"{command} needs cniVersion >= {MIN_VERSION_FOR[command]}, config is {version}")
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if "CNI_CONTAINERID" in REQUIRED_ENV[command]:
        validate_container_id(container_id)
    if "CNI_IFNAME" in REQUIRED_ENV[command]:
        validate_ifname(ifname)
    if "prevResult" in config and config["prevResult"] is not None and not isinstance(
            config["prevResult"], dict):
        raise CniError.of(Kind.DECODE_FAILURE, "prevResult must be a JSON object",
                          f"got a JSON {type(config['prevResult']).__name__}")
    args, warnings = parse_cni_args(env.get("CNI_ARGS", ""))
    return Request(command=command, cni_version=version, config=config, container_id=container_id,
                   netns=env.get("CNI_NETNS", ""), ifname=ifname, args=args,
                   path=env.get("CNI_PATH", ""), warnings=tuple(warnings))
