"""The plugin's thin client: hand one CNI call to the node agent, or say "do it yourself".

Owns: the client half of the agent protocol (natra.node.agent owns the other
half) and the rule for when not to use the agent.
Protocol, one call per connection over a unix stream socket:
    request:  netstring(MAGIC) netstring(deadline) netstring(env) netstring(stdin)
    reply:    netstring(exit code) netstring(stdout) netstring(stderr)
where netstring(b) is b"<len>:" + b + b",", the deadline is the client's
CLOCK_MONOTONIC ns after which it has stopped waiting (the agent then does not
start the call), and env is the CNI_* and NATRA_* variables as "k=v" joined by
NUL.
Rule: `forward` never raises and never blocks longer than its timeout. It
returns None, and the caller runs the call itself, when the agent is absent
(no socket), restarting (refused), wedged (no reply in time) or says anything
but a well-formed reply. It imports only modules Python has loaded at start-up
(`_socket` is the C module under `socket`), because every Pod start pays for
what this file imports.
Must not know: what the call does; the kernel.
"""

import _socket
import os
import time

MAGIC = b"natra-cni/1"
SOCKET_ENV = "NATRA_AGENT_SOCKET"
TIMEOUT_ENV = "NATRA_AGENT_TIMEOUT_MS"
DEFAULT_SOCKET = "/run/natra/agent/agent.sock"  # its own 0700 directory
DEFAULT_TIMEOUT_MS = 3000  # a healthy agent answers in tens of ms; this bounds a wedged one
GC_TIMEOUT_FACTOR = 10
FORWARDED_PREFIXES = ("CNI_", "NATRA_")
MAX_REPLY_BYTES = 16 << 20
OFF = ("", "off", "none")


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def read_netstring(buf: bytes, at: int, limit: int = MAX_REPLY_BYTES) -> tuple[bytes, int]:
    """(payload, next offset) of the netstring at `at`; ValueError when malformed or short."""
    colon = buf.index(b":", at, at + 12)
    size = int(buf[at:colon])
    if size < 0 or size > limit:
        raise ValueError(f"netstring of {size} bytes")
    end = colon + 1 + size
    if len(buf) < end + 1 or buf[end:end + 1] != b",":
        raise ValueError("short or unterminated netstring")
    return buf[colon + 1:end], end + 1


def encode_env(env) -> bytes:
    return b"\0".join(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in sorted(env.items())
                      if k.startswith(FORWARDED_PREFIXES))


def socket_path(env) -> str | None:
    """Where the agent listens, or None when this call must not use one."""
    path = env.get(SOCKET_ENV, DEFAULT_SOCKET)
    return None if path.strip().lower() in OFF else path


def timeout_s(env) -> float:
    """How long to wait for the agent's answer. GC walks every container of the node and
    is not on a Pod's start-up path: it gets ten times as long before the plugin runs
    it again by itself (GC takes no container lock to keep the two apart)."""
    try:
        ms = int(env.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MS))
    except ValueError:
        ms = DEFAULT_TIMEOUT_MS
    return max(ms, 1) / 1000 * (GC_TIMEOUT_FACTOR if env.get("CNI_COMMAND") == "GC" else 1)


def forward(env, stdin: bytes) -> tuple[int, bytes, bytes] | None:
    """(exit code, stdout, stderr) as the agent ran the call, or None: run it yourself."""
    path = socket_path(env)
    if path is None or not os.path.exists(path):
        return None  # absent: the common case on a node without the agent, one stat()
    wait = timeout_s(env)
    deadline = time.monotonic_ns() + int(wait * 1e9)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(wait)
        sock.connect(path)
        sock.sendall(netstring(MAGIC) + netstring(str(deadline).encode()) + netstring(encode_env(env))
                     + netstring(stdin))
        sock.shutdown(_socket.SHUT_WR)
        chunks, size = [], 0
        while True:
            left = (deadline - time.monotonic_ns()) / 1e9
            if left <= 0:
                return None  # wedged: the agent will see the deadline and not start
            sock.settimeout(left)
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                return None
        reply = b"".join(chunks)
        code, at = read_netstring(reply, 0, 12)
        out, at = read_netstring(reply, at)
        err, at = read_netstring(reply, at)
        return int(code), out, err
    except (OSError, ValueError):
        return None  # refused (restarting), timed out, reset, or a reply we cannot read
    finally:
        sock.close()
