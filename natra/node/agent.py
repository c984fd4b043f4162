"""The node agent: runs the plugin's CNI calls warm, with verified programs at hand.

Owns: `natra agent`, a long-lived process (the DaemonSet's container) that
listens on a unix socket for the plugin's thin client (natra.cni.agentclient
speaks the other half of the protocol), runs each call through the same
`natra.cni.plugin.run` the plugin's own process runs, and keeps a pool of
loaded programs (natra.kernel.pool), so that a Pod's ADD skips Python's start
and imports and the verifier. When a burst of ADDs has taken every ready
object, a Pod is bound to the pool's shared interim program (natra.kernel.interim,
verified once) instead of waiting for a verification, and gets its own program
after the answer.
Rules kept:
- Who may call: the socket is made mode 0600 in a directory of mode 0700, both
  owned by the agent's user (root); each connection's peer credentials
  (SO_PEERCRED) must be uid 0 as well, or the call is refused and logged. An
  unprivileged process on the node cannot change a Pod's limits through it.
- The agent holds nothing a Pod needs: every Pod's state is pinned in bpffs
  and attached in the kernel, as when the plugin ran alone. Killing or
  restarting the agent changes no limit; a client that finds no agent, a
  refused socket or no reply in time runs the call itself.
- A call whose client has given up (its deadline passed before the agent got
  to it) is not started. Each call holds its container's lock
  (natra.cni.serial), as the plugin's own process does, so a late agent and a
  client that went ahead never interleave.
- One call at a time, in arrival order (the kernel serialises the expensive
  parts under rtnl anyway); reading a request is bounded in time and size.
- Work that need not delay an answer waits for it: a DEL's detaches, and an
  ADD's settling (natra.kernel.datapath.settle): the Pod's own program in place
  of the shared one, and an `auto` ADD's move from clsact to tcx links. It runs
  once no call has come for IDLE_BEFORE_MOVE_S since the last one ended, one
  Pod at a time, under the container's lock. Pods left unsettled by a previous
  agent are found in the pin root at start and settled.
Must not know: what a call does (natra.cni.plugin does).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time

from natra.cni import agentclient as proto
from natra.cni import serial
from natra.cni.request import MAX_STDIN_BYTES

SOCKET_DIR_MODE = 0o700
SOCKET_MODE = 0o600
READ_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = MAX_STDIN_BYTES + 1  # the client forwards one byte more, so the plugin says "too large"
BACKLOG = 128
ROOT_UID = 0
# Ready objects of the default tuning: a burst of Pod starts takes them faster than
# one thread can verify new ones (~90-190 ms each), so the pool holds a burst's
# worth; each costs ~290 KiB of kernel memory (maps and programs) held by the agent.
DEFAULT_POOL_DEPTH = 8
# Threads loading new objects at once. The verifier runs on the loading thread, so
# two loaders on two CPUs refill ~1.8x as fast; more would only help a node (and an
# agent CPU limit) with more CPUs to spare during a burst.
DEFAULT_LOADERS = 2
OTHER_SHAPES_DEPTH = 2
# Slots of the shared interim program kept filled for the default tuning (each a
# Pod's maps, 236 KiB): ADDs beyond the ready objects are bound to it at once.
# A slot refills in ~20-30 ms (five RCU grace periods, waited side by side).
DEFAULT_SHARED_SLOTS = 8
# With the shared program to fall back on, no ADD of the default tuning waits for a
# loader, so the loaders run at the lowest priority: during a burst they take only
# the CPU time the ADDs leave (a load competing with an ADD on a 2-CPU node cost it
# ~15 ms). Without it, they keep the agent's priority.
LOADER_NICE = 19
# A Pod's move to tcx holds rtnl for two RCU grace periods (~25 ms): it waits until
# no call has come for this long, so a burst of ADDs is answered first.
IDLE_BEFORE_MOVE_S = 0.2
FAILED_OPEN = "ADD failed open"  # natra.cni.executor's log line for an ADD that limits nothing


def _lock_env(env, container_id: str) -> dict[str, str]:
    """What serial.hold needs to take `container_id`'s lock where `env`'s calls take it."""
    return {**({serial.LOCK_DIR_ENV: env[serial.LOCK_DIR_ENV]} if serial.LOCK_DIR_ENV in env else {}),
            "CNI_CONTAINERID": container_id}


def peer_uid(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid


def parse_request(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(deadline ns, env, stdin) of one request; ValueError when malformed."""
    magic, at = proto.read_netstring(data, 0, 64)
    if magic != proto.MAGIC:
        raise ValueError(f"protocol {magic[:32]!r}, expected {proto.MAGIC!r}")
    deadline, at = proto.read_netstring(data, at, 24)
    env_block, at = proto.read_netstring(data, at, MAX_REQUEST_BYTES)
    stdin, at = proto.read_netstring(data, at, MAX_REQUEST_BYTES)
    env = {}
    for item in env_block.split(b"\0") if env_block else []:
        key, eq, value = item.decode("utf-8", "surrogateescape").partition("=")
        if not eq or not key.startswith(proto.FORWARDED_PREFIXES):
            raise ValueError(f"environment entry {key[:40]!r} is not a forwarded variable")
        env[key] = value
    return int(deadline), env, stdin


def encode_reply(code: int, out: bytes, err: bytes) -> bytes:
    return proto.netstring(str(code).encode()) + proto.netstring(out) + proto.netstring(err)


def make_socket(path: str, *, uid: int | None = None) -> socket.socket:
    """Bind `path` (replacing a stale socket file, never another kind of file) with the
    modes of the rule above."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=SOCKET_DIR_MODE, exist_ok=True)
    os.chmod(directory, SOCKET_DIR_MODE)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # the socket is born 0600: no window in which others may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    if uid is not None:
        os.chown(path, uid, -1)
    sock.listen(BACKLOG)
    return sock


class Agent:
    """The accept loop and the call runner; `serve` returns when `stop()` is called."""

    def __init__(self, path: str, *, pool=None, log=None, clock=time.monotonic_ns, wall=time.time_ns,
                 allowed_uid: int = ROOT_UID, pin_root: str | None = None,
                 move_idle_s: float = IDLE_BEFORE_MOVE_S):
        self.path = path
        self.pin_root = pin_root  # where start() looks for moves to tcx left unfinished
        self.move_idle_s = move_idle_s
        self.pool = pool
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.clock, self.wall = clock, wall
        self.allowed_uid = allowed_uid
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self.served = self.refused = self.expired = self.handed_back = 0
        self._deferred: list = []  # teardown steps of the current call, run after its reply
        self._moves: collections.deque = collections.deque()  # (lock env naming the container, step)
        self._env: dict[str, str] = {}  # the call being run
        self._last_call_ns = 0  # when the last call ended (clock ns): moves wait for quiet after it

    def start(self) -> None:
        from natra.cni import plugin  # noqa: F401 - warm every import before the first call
        from natra.kernel import datapath

        datapath.use_deferred_teardown(self._deferred.append)
        datapath.use_tcx_later(self._later_move)
        self._find_unfinished_moves(datapath)
        if self.pool is not None:
            datapath.use_object_source(self.pool.take)
            self.pool.start()
        self._sock = make_socket(self.path)
        self.log(f"natra agent: listening on {self.path}"
                 + (f" ({self.pool.loaders} loading programs)" if self.pool is not None else ""))

    def _later_move(self, container_id: str, step) -> None:
        self._moves.append((_lock_env(self._env, container_id), step))

    def _find_unfinished_moves(self, datapath) -> None:
        try:
            unfinished = datapath.pending_moves(root=self.pin_root)
        except Exception as exc:  # noqa: BLE001 - the moves wait for the next start; Pods stay limited
            self.log(f"natra agent: cannot look for unfinished moves to tcx: {exc}")
            return
        for container_id in unfinished:
            self._moves.append((_lock_env(os.environ, container_id),
                                lambda c=container_id: datapath.settle(c, root=self.pin_root)))
        if unfinished:
            self.log(f"natra agent: {len(unfinished)} Pod(s) still to settle (own program, tcx)")

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve(self) -> None:
        assert self._sock is not None, "start() first"
        try:
            while not self._stop.is_set():
                if self._moves:
                    quiet_s = (self.clock() - self._last_call_ns) / 1e9
                    if not self._call_waiting(max(0.0, self.move_idle_s - quiet_s)):
                        self.run_move()
                        continue
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                with conn:
                    self.handle(conn)
                self._last_call_ns = self.clock()
        finally:
            self.close()

    def _call_waiting(self, timeout_s: float) -> bool:
        try:
            readable, _, _ = select.select([self._sock], [], [], timeout_s)
        except (OSError, ValueError):
            return True  # let accept() report it
        return bool(readable)

    def run_move(self) -> None:
        """One Pod's settling (own program, move to tcx), under its container's lock."""
        lock_env, step = self._moves.popleft()
        container_id = lock_env["CNI_CONTAINERID"]
        started = self.clock()
        with serial.hold(lock_env):
            try:
                said = step()
            except Exception as exc:  # noqa: BLE001 - on clsact the Pod is limited all the same
                said = f"settling failed, still limited as answered (the next start retries): {exc}"
        self.log(f"natra agent: {container_id}: {said}, in {(self.clock() - started) / 1e6:.1f} ms")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
        from natra.kernel import datapath

        datapath.use_deferred_teardown(None)
        datapath.use_tcx_later(None)
        if self.pool is not None:
            datapath.use_object_source(None)
            self.pool.stop()

    def handle(self, conn: socket.socket) -> None:
        try:
            pid, uid = peer_uid(conn)
        except OSError as exc:
            self.log(f"natra agent: refused a call: cannot read peer credentials: {exc}")
            self.refused += 1
            return
        if uid != self.allowed_uid:
            self.log(f"natra agent: refused a call from pid {pid} uid {uid}: only uid {self.allowed_uid} "
                     "may run CNI calls")
            self.refused += 1
            return
        try:
            deadline, env, stdin = parse_request(self._read(conn))
        except (OSError, ValueError) as exc:
            self.log(f"natra agent: unreadable call from pid {pid}: {exc}")
            return
        netns = env.get("CNI_NETNS", "")
        if netns and env.get("CNI_COMMAND") in ("ADD", "CHECK") and not self.sees_netns(netns):
            # This process does not see the runtime's namespace mounts (a container without the
            # host's /run/netns, or one whose mount does not receive new namespaces): the
            # plugin, which does, runs the call itself instead of failing it open here.
            self.log(f"natra agent: cannot see {netns}; {env['CNI_COMMAND']} "
                     f"{env.get('CNI_CONTAINERID', '-')} is left to the plugin")
            return
        if self.clock() >= deadline:
            self.expired += 1
            self.log(f"natra agent: skipped {env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '-')} "
                     f"from pid {pid}: its client stopped waiting (it runs the call itself)")
            return
        started = self.clock()
        replied = [started]

        def reply(code: int, out: bytes, err: bytes) -> None:
            replied[0] = self.clock()
            self.served += 1  # before the answer leaves: a client that has it sees it counted
            try:
                conn.sendall(encode_reply(code, out, err))
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client gave up; the call is done and its state is in the kernel

        code = self.run(env, stdin, reply)
        if code is None:
            return
        self.log(f"natra agent: {env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '-')} "
                 f"exit {code}, answered in {(replied[0] - started) / 1e6:.1f} ms, "
                 f"done in {(self.clock() - started) / 1e6:.1f} ms"
                 + (f" (programs ready: {self.pool.ready_count()}, on the shared program: "
                    f"{self.pool.interim})" if self.pool is not None else ""))

    @staticmethod
    def sees_netns(path: str) -> bool:
        from natra.kernel import datapath

        return datapath.is_netns(path)

    def run(self, env: dict[str, str], stdin: bytes, reply) -> int | None:
        """Run one call under its container's lock, `reply(code, stdout, stderr)`, then the
        teardown steps the call deferred (natra.kernel.datapath.remove); its exit code, or
        None when the call is handed back to the plugin unanswered."""
        from natra.cni import plugin

        stderr = io.StringIO()
        self._env = env
        with serial.hold(env) as held:
            if not held and env.get("CNI_CONTAINERID"):
                stderr.write(f"natra WARN: container {env['CNI_CONTAINERID']} lock not held; going ahead\n")
            try:
                code, out = plugin.run(env, stdin, now=self.wall(), stderr=stderr)
            except Exception as exc:  # noqa: BLE001 - plugin.run fails open itself; this is a last line
                code, out = 1, b""
                stderr.write(f"natra agent: {exc!r}\n")
            said = stderr.getvalue()
            if env.get("CNI_COMMAND") == "ADD" and FAILED_OPEN in said:
                # Never worse than the plugin alone: what failed here may be this process's
                # view of the node (a mount it lacks), so the plugin tries once more itself.
                self.finish_deferred(env)
                self.handed_back += 1
                self.log(f"natra agent: ADD {env.get('CNI_CONTAINERID', '-')} failed open here; "
                         "left to the plugin to try itself")
                return None
            reply(code, out, said.encode("utf-8", "replace"))
            self.finish_deferred(env)
        return code

    def finish_deferred(self, env: dict[str, str]) -> None:
        steps, self._deferred[:] = list(self._deferred), []
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - GC removes what is left (an orphan IFB)
                self.log(f"natra agent: {env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '-')}: "
                         f"teardown after the reply failed (GC will retry): {exc}")

    def _read(self, conn: socket.socket) -> bytes:
        conn.settimeout(READ_TIMEOUT_S)
        chunks, size = [], 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > 2 * MAX_REQUEST_BYTES + 4096:  # stdin and the environment
                raise ValueError(f"request larger than {2 * MAX_REQUEST_BYTES} bytes")


def loaders_for(asked: int) -> int:
    """The loading threads the agent runs when `asked` for: at most one per CPU, since
    each verification keeps one CPU busy."""
    return max(1, min(asked, os.cpu_count() or 1))


def default_pool(depth: int, loaders: int = DEFAULT_LOADERS, slots: int = DEFAULT_SHARED_SLOTS, note=None):
    """A pool primed with `depth` objects of the shape a Pod with default tuning limited
    to 100 Mbit/s asks for (the flow table follows the rate of the policing fallback,
    natra.cni.plan). Other shapes join the pool when a Pod first asks for them, with
    up to OTHER_SHAPES_DEPTH ready each; it keeps the last eight. With `slots`, the default
    shape also has a shared interim program with that many slots filled."""
    from natra.kernel import loader, pool
    from natra.kernel import params as P

    objects = pool.ObjectPool(per_shape=min(depth, OTHER_SHAPES_DEPTH), shapes=8,
                              loaders=loaders_for(loaders), shared=slots > 0, slots=slots, note=note,
                              nice=LOADER_NICE if slots > 0 else 0)
    police = P.params_for(100_000_000, mode=P.MODE_POLICE)
    try:
        objects.prime([P.to_config(P.params_for(100_000_000, mode=P.MODE_SHAPE))] * 2,
                      flow_table=P.flow_table_entries([police, police]), depth=depth)
    except loader.LoadError:
        pass  # no object built: every take loads in line and reports it as the plugin would
    return objects


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=proto.DEFAULT_SOCKET,
                        help=f"unix socket to listen on (default {proto.DEFAULT_SOCKET}; the plugin "
                             f"looks there unless ${proto.SOCKET_ENV} names another)")
    parser.add_argument("--bpffs-root", default=None, metavar="DIR",
                        help="the pin root of the node's Natra entry (its bpffsRoot; default "
                             "$NATRA_BPFFS_ROOT or /sys/fs/bpf/natra), where the agent finishes at start "
                             "the moves to tcx that a previous agent left")
    parser.add_argument("--tcx-move-idle-ms", type=int, default=int(IDLE_BEFORE_MOVE_S * 1000), metavar="MS",
                        help="an attachMode auto ADD is answered on clsact filters; the agent moves the Pod "
                             "to tcx links once no call has come for this long (default "
                             f"{int(IDLE_BEFORE_MOVE_S * 1000)}; each move holds rtnl ~25 ms)")
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL_DEPTH, metavar="N",
                        help="loaded programs kept ready for the default tuning (0: load at each ADD; "
                             f"default {DEFAULT_POOL_DEPTH}, ~330 KiB of kernel memory each); other tunings "
                             f"keep up to {OTHER_SHAPES_DEPTH}")
    parser.add_argument("--shared-slots", type=int, default=DEFAULT_SHARED_SLOTS, metavar="N",
                        help="Pods of the default tuning that a burst of ADDs can bind at once to the shared "
                             "interim program (verified once) when no loaded program is ready; each gets its "
                             f"own program after the answer (0: wait for the verifier; default "
                             f"{DEFAULT_SHARED_SLOTS}, 236 KiB each)")
    parser.add_argument("--loaders", type=int, default=DEFAULT_LOADERS, metavar="N",
                        help="threads loading programs for the pool at once, at most one per CPU "
                             f"(default {DEFAULT_LOADERS}; each verification is ~0.1-0.2 s of one CPU)")


def agent_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("natra agent: must run as root (it loads programs and owns a root-only socket)",
              file=sys.stderr)
        return 1
    if args.pool < 0:
        print("natra agent: --pool must be >= 0", file=sys.stderr)
        return 2
    if args.loaders < 1:
        print("natra agent: --loaders must be >= 1", file=sys.stderr)
        return 2
    if args.shared_slots < 0:
        print("natra agent: --shared-slots must be >= 0", file=sys.stderr)
        return 2
    if args.tcx_move_idle_ms < 0:
        print("natra agent: --tcx-move-idle-ms must be >= 0", file=sys.stderr)
        return 2
    def note(message: str) -> None:
        print(f"natra agent: {message}", file=sys.stderr, flush=True)

    objects = default_pool(args.pool, args.loaders, args.shared_slots, note) if args.pool else None
    agent = Agent(args.socket, pool=objects,
                  pin_root=args.bpffs_root, move_idle_s=args.tcx_move_idle_ms / 1000)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop())
    try:
        agent.start()
    except OSError as exc:
        print(f"natra agent: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 1
    agent.serve()
    print(f"natra agent: stopped after {agent.served} calls ({agent.refused} refused, "
          f"{agent.expired} given up by their client)", file=sys.stderr)
    return 0
