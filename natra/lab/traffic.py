"""Small request/response traffic for the demo and the benchmarks.

Owns: a sink server that reads a request of a known size and answers one byte,
and a client that sends requests of a given size and records how long each
took (connect to answer); a bulk sender and a bulk sink that counts what one
connection delivers per interval on its own clock (the benchmarks' sweep). Run inside network namespaces with
`ip netns exec NS python3 -m natra.lab.traffic ...`; the client prints JSON.
Rule: bounded everywhere: a request count, a deadline and socket timeouts.
Must not know: namespaces, limiters, CNI.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

SOCKET_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 64 * 1024 * 1024
HEADER = 8  # request length, big-endian, then the payload


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 65536))
        if not chunk:
            raise ConnectionError("peer closed early")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(SOCKET_TIMEOUT_S)
        try:
            size = int.from_bytes(_recv_exact(conn, HEADER), "big")
            if size > MAX_REQUEST_BYTES:
                return
            _recv_exact(conn, size)
            conn.sendall(b"k")
        except (OSError, ConnectionError):
            return


def serve(port: int, deadline_s: float) -> None:
    """Answer requests until the deadline passes."""
    srv = socket.create_server(("0.0.0.0", port), reuse_port=False)
    srv.settimeout(0.5)
    end = time.monotonic() + deadline_s
    with srv:
        while time.monotonic() < end:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def request(host: str, port: int, size: int) -> float:
    """One request of `size` bytes; seconds from connect to the answer."""
    payload = size.to_bytes(HEADER, "big") + b"\0" * size
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S) as conn:
        conn.sendall(payload)
        if conn.recv(1) != b"k":
            raise ConnectionError("no answer")
    return time.perf_counter() - start


def run_client(host: str, port: int, size: int, count: int, interval_s: float) -> dict:
    latencies, failures = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            latencies.append(request(host, port, size))
        except (OSError, ConnectionError):
            failures += 1
        rest = interval_s - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
    return {"size": size, "latencies_s": latencies, "failures": failures}


def bulk_sink(port: int, seconds: float, interval_s: float) -> dict:
    """Bytes one bulk connection delivers, per `interval_s`, for `seconds` after it connects.

    The receiver's own clock and no control channel: works at any rate, even
    1 kbit/s, where an iperf3 control exchange through the same limit stalls.
    """
    counts = [0] * max(1, round(seconds / interval_s))
    srv = socket.create_server(("0.0.0.0", port))
    with srv:
        print("ready", flush=True)
        srv.settimeout(seconds)
        try:
            conn, _ = srv.accept()
        except TimeoutError:  # a limiter that passes nothing, not even the handshake
            return {"interval_s": interval_s, "counts": counts, "bytes": 0, "connected": False}
    start = time.monotonic()
    end = start + len(counts) * interval_s
    with conn:
        try:
            while (now := time.monotonic()) < end:
                conn.settimeout(end - now)
                data = conn.recv(65536)
                if not data:
                    break
                counts[min(int((time.monotonic() - start) / interval_s), len(counts) - 1)] += len(data)
        except OSError:
            pass
    return {"interval_s": interval_s, "counts": counts, "bytes": sum(counts), "connected": True}


def bulk_send(host: str, port: int, size: int, seconds: float) -> dict:
    """Send up to `size` bytes as fast as TCP takes them, for at most `seconds`."""
    chunk = b"\0" * 65536
    sent = 0
    end = time.monotonic() + seconds
    try:
        conn = socket.create_connection((host, port), timeout=seconds)
    except OSError as e:
        return {"sent": 0, "error": str(e)}
    with conn:
        try:
            while sent < size and (now := time.monotonic()) < end:
                conn.settimeout(end - now)
                sent += conn.send(chunk[:min(len(chunk), size - sent)])
        except OSError:
            pass
    return {"sent": sent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m natra.lab.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--deadline", type=float, default=120.0)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--size", type=int, default=10_000)
    c.add_argument("--count", type=int, default=50)
    c.add_argument("--interval", type=float, default=0.05)
    k = sub.add_parser("bulk-sink")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--seconds", type=float, required=True)
    k.add_argument("--interval", type=float, default=0.1)
    b = sub.add_parser("bulk-send")
    b.add_argument("--host", required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "bulk-sink":
        json.dump(bulk_sink(args.port, args.seconds, args.interval), sys.stdout)
        return 0
    if args.cmd == "bulk-send":
        json.dump(bulk_send(args.host, args.port, args.size, args.seconds), sys.stdout)
        return 0
    if args.cmd == "serve":
        serve(args.port, args.deadline)
        return 0
    json.dump(run_client(args.host, args.port, args.size, args.count, args.interval), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
