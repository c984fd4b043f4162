"""TCP endpoints for the peer scenarios, run inside a namespace as a script.

    ip netns exec NS python3 tests/peer/tcp.py echo-serve --port P --deadline S
    ip netns exec NS python3 tests/peer/tcp.py echo --host H --port P --size N --timeout S

The server prints one line ("ready") once it listens; the client prints one
JSON object (bulk transfers use natra.lab.traffic's bulk-sink and bulk-send).
Everything is bounded by a deadline, so a stuck limiter ends a test instead of
hanging it.
Must not know: CNI, namespaces, limiters.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

CHUNK = 65536


def _echo_one(conn: socket.socket, deadline: float) -> None:
    with conn:
        try:
            while time.monotonic() < deadline:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                data = conn.recv(CHUNK)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return


def echo_serve(port: int, seconds: float) -> None:
    """Echo every connection until its peer closes, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(0.2)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo_one, args=(conn, deadline), daemon=True).start()


def echo(host: str, port: int, size: int, timeout: float) -> dict:
    """Send `size` bytes, read them back; seconds from connect until all came back."""
    message = b"a" * size
    got = bytearray()
    start = time.monotonic()
    deadline = start + timeout
    with socket.create_connection((host, port), timeout=timeout) as conn:
        def read() -> None:
            try:
                while len(got) < size and time.monotonic() < deadline:
                    conn.settimeout(max(deadline - time.monotonic(), 0.01))
                    data = conn.recv(CHUNK)
                    if not data:
                        return
                    got.extend(data)
            except OSError:
                return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            conn.sendall(message)
        except OSError:
            pass
        reader.join(max(deadline - time.monotonic(), 0))
        seconds = time.monotonic() - start
    return {"seconds": seconds, "received": len(got), "ok": bytes(got) == message}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tcp.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("echo-serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--deadline", type=float, default=120.0)
    e = sub.add_parser("echo")
    e.add_argument("--host", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--size", type=int, required=True)
    e.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.cmd == "echo-serve":
        echo_serve(args.port, args.deadline)
        return 0
    json.dump(echo(args.host, args.port, args.size, args.timeout), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
