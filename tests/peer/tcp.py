"""TCP endpoints for the peer scenarios, run inside a namespace as a script.

    ip netns exec NS python3 tests/peer/tcp.py echo-serve --port P --deadline S
    ip netns exec NS python3 tests/peer/tcp.py echo --host H --port P --size N --timeout S
    ip netns exec NS python3 tests/peer/tcp.py sink --port P --seconds S
    ip netns exec NS python3 tests/peer/tcp.py blast --host H --port P --size N --seconds S

Servers print one line ("ready") once they listen; clients and the sink print
one JSON object. Everything is bounded by a deadline, so a stuck limiter ends
a test instead of hanging it.
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


def sink(port: int, seconds: float) -> dict:
    """Count the bytes one connection delivers within `seconds` of listening."""
    with socket.create_server(("0.0.0.0", port)) as srv:
        print("ready", flush=True)
        start = time.monotonic()
        deadline = start + seconds
        total = 0
        srv.settimeout(seconds)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            return {"bytes": 0, "seconds": time.monotonic() - start}
        with conn:
            try:
                while time.monotonic() < deadline:
                    conn.settimeout(max(deadline - time.monotonic(), 0.01))
                    data = conn.recv(CHUNK)
                    if not data:
                        break
                    total += len(data)
            except OSError:
                pass
    return {"bytes": total, "seconds": time.monotonic() - start}


def blast(host: str, port: int, size: int, seconds: float) -> dict:
    """Send up to `size` bytes as fast as TCP takes them, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    sent = 0
    chunk = b"b" * CHUNK
    with socket.create_connection((host, port), timeout=seconds) as conn:
        try:
            while sent < size and time.monotonic() < deadline:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                sent += conn.send(chunk[:min(CHUNK, size - sent)])
        except OSError:
            pass
    return {"sent": sent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tcp.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("echo-serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--deadline", type=float, default=120.0)
    e = sub.add_parser("echo")
    k = sub.add_parser("sink")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--seconds", type=float, required=True)
    b = sub.add_parser("blast")
    for p in (e, b):
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--size", type=int, required=True)
    e.add_argument("--timeout", type=float, default=60.0)
    b.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "echo-serve":
        echo_serve(args.port, args.deadline)
        return 0
    if args.cmd == "echo":
        out = echo(args.host, args.port, args.size, args.timeout)
    elif args.cmd == "sink":
        out = sink(args.port, args.seconds)
    else:
        out = blast(args.host, args.port, args.size, args.seconds)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
