"""One iperf3 run between two network namespaces, as the receiver counted it.

Owns: starting a one-test iperf3 server in the Pod's namespace, waiting until
it listens, running the client (in another namespace or in the host's) to the
Pod's address, either way (`reverse`: the Pod sends, iperf3 -R), and reading
the receiver's bytes and seconds from the client's JSON. The server is always
killed and reaped, also when the run fails.
Rule: a namespace is a name under /var/run/netns or a path to a netns file
(both are entered with nsenter); None is the host's namespace. Every failure
is a RuntimeError that says what iperf3 said.
Must not know: limiters, CNI, what the caller does with the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

PORT = 5201
CONNECT_TIMEOUT_MS = 3000
EXTRA_WAIT_S = 30  # beyond the run's own length before a hung client is killed
LISTEN_WAIT_S = 5.0


@dataclass(frozen=True)
class Transfer:
    received_bytes: int
    seconds: float

    @property
    def bits(self) -> int:
        return 8 * self.received_bytes

    @property
    def bits_per_s(self) -> float:
        return self.bits / self.seconds


def in_netns(netns: str | None, *argv: str) -> list[str]:
    """argv running `argv` in `netns` (a name, a path, or None for the host's)."""
    if netns is None:
        return list(argv)
    path = netns if os.sep in netns else os.path.join("/var/run/netns", netns)
    return ["nsenter", f"--net={path}", *argv]


def wait_listening(netns: str | None, port: int, wait_s: float = LISTEN_WAIT_S) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        out = subprocess.run(in_netns(netns, "ss", "-Hltn", f"sport = :{port}"), capture_output=True,
                             text=True)
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"iperf3 server in {netns} not listening on {port} after {wait_s} s")


def run(server_netns: str, address: str, seconds: float, *, client_netns: str | None = None,
        reverse: bool = False, port: int = PORT, extra_args: tuple[str, ...] = ()) -> Transfer:
    """iperf3 for `seconds` to the server at `address` in `server_netns`; with
    `reverse` the server sends. Returns what the receiver counted."""
    server = subprocess.Popen(in_netns(server_netns, "iperf3", "-s", "-1", "-p", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(server_netns, port)
        client = in_netns(client_netns, "iperf3", "-c", address, "-p", str(port), "-t", f"{seconds:g}", "-J",
                          "--connect-timeout", str(CONNECT_TIMEOUT_MS), *extra_args)
        if reverse:
            client.append("-R")
        try:
            proc = subprocess.run(client, capture_output=True, text=True, timeout=seconds + EXTRA_WAIT_S)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"iperf3 to {address}: no end after {seconds + EXTRA_WAIT_S} s") from e
        try:
            report = json.loads(proc.stdout or "{}")
        except ValueError:
            report = {}
        end = report.get("end", {}).get("sum_received")
        if "error" in report or not end:
            raise RuntimeError(f"iperf3 to {address}: {report.get('error') or proc.stderr.strip()}")
        return Transfer(received_bytes=int(end["bytes"]), seconds=float(end["seconds"]))
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
