"""Raw bpf(2) commands through ctypes: the few the loader, attach code and tools need.

Owns: the byte layout of `union bpf_attr` for each command used here (map
element access, pinning, links, object info, BPF_PROG_TEST_RUN) and turning a
failed call into `BpfError`, which carries the errno and the operation.
Rule: one function per command, file descriptors in and out as ints; the
caller owns and closes every fd it receives. No retries, no policy.
Must not know: Natra's maps or layouts, libbpf, attach modes, numpy/scapy.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import platform
import struct

# bpf(2) syscall numbers per machine (the only arch-dependent fact here).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}

# enum bpf_cmd
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_LOOKUP_BATCH = 24
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34

# enum bpf_attach_type values used with tcx links
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# tcx link placement flags (uapi BPF_F_BEFORE / BPF_F_AFTER / BPF_F_REPLACE)
BPF_F_REPLACE = 1 << 2
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4

_ATTR_SIZE = 144  # bytes of union bpf_attr passed; larger than any command used here
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed: `.errno` and `.op` say which and why."""

    def __init__(self, err: int, op: str):
        super().__init__(err, f"bpf {op}: {os.strerror(err)}")
        self.op = op


def _sys_bpf_number() -> int:
    machine = platform.machine()
    if machine not in _SYS_BPF:
        raise OSError(_errno.ENOSYS, f"bpf(2): unknown syscall number for machine {machine}")
    return _SYS_BPF[machine]


def _call(cmd: int, attr: ctypes.Array, op: str) -> int:
    ret = _libc.syscall(_sys_bpf_number(), ctypes.c_int(cmd), attr, ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        raise BpfError(ctypes.get_errno(), op)
    return ret


def _attr(fmt: str, *values) -> ctypes.Array:
    """A zeroed attr buffer with `values` packed at offset 0 (native byte order)."""
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=" + fmt, buf, 0, *values)
    return buf


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


# ---- map elements ---------------------------------------------------------------------

def _call_unless_absent(cmd: int, attr: ctypes.Array, what: str) -> bool:
    """`_call`; False instead of an error when the kernel answers ENOENT (no such key)."""
    try:
        _call(cmd, attr, what)
    except BpfError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value of `key`, or None when absent (ENOENT). Per-CPU maps: pass the full size."""
    kbuf = ctypes.create_string_buffer(bytes(key), len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    found = _call_unless_absent(BPF_MAP_LOOKUP_ELEM, _attr("IIQQQ", fd, 0, _addr(kbuf), _addr(vbuf), 0),
                                "map lookup")
    return vbuf.raw if found else None


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    kbuf = ctypes.create_string_buffer(bytes(key), len(key))
    vbuf = ctypes.create_string_buffer(bytes(value), len(value))
    _call(BPF_MAP_UPDATE_ELEM, _attr("IIQQQ", fd, 0, _addr(kbuf), _addr(vbuf), flags), "map update")


def map_delete(fd: int, key: bytes) -> bool:
    """Delete `key`; False if it was not there."""
    kbuf = ctypes.create_string_buffer(bytes(key), len(key))
    return _call_unless_absent(BPF_MAP_DELETE_ELEM, _attr("IIQQQ", fd, 0, _addr(kbuf), 0, 0), "map delete")


def map_get_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after `key` (the first key when None); None at the end."""
    kbuf = ctypes.create_string_buffer(bytes(key), len(key)) if key is not None else None
    nbuf = ctypes.create_string_buffer(key_size)
    found = _call_unless_absent(BPF_MAP_GET_NEXT_KEY, _attr("IIQQQ", fd, 0, _addr(kbuf), _addr(nbuf), 0),
                                "map get_next_key")
    return nbuf.raw if found else None


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map (a snapshot; entries may change meanwhile)."""
    keys: list[bytes] = []
    key = map_get_next_key(fd, None, key_size)
    while key is not None:
        keys.append(key)
        key = map_get_next_key(fd, key, key_size)
    return keys


def map_lookup_batch_raw(fd: int, key_size: int, value_size: int, chunk: int = 4096) -> tuple[bytes, bytes]:
    """Every key and value of a map in few syscalls (BPF_MAP_LOOKUP_BATCH), back to back:
    (keys, values), entry i at i * key_size and i * value_size.

    `value_size` is the full value size (per-CPU maps: rounded size times CPUs).
    """
    out_keys, out_values = bytearray(), bytearray()
    token = ctypes.create_string_buffer(max(key_size, 8))  # opaque batch position
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    first = True
    while True:
        # in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
        attr = _attr("QQQQIIQQ", 0 if first else _addr(token), _addr(token), _addr(keys), _addr(values),
                     chunk, fd, 0, 0)
        done = False
        try:
            _call(BPF_MAP_LOOKUP_BATCH, attr, "map lookup_batch")
        except BpfError as e:
            if e.errno != _errno.ENOENT:
                raise
            done = True
        count = struct.unpack_from("=I", attr, 32)[0]
        out_keys += keys.raw[:count * key_size]
        out_values += values.raw[:count * value_size]
        if done:
            return bytes(out_keys), bytes(out_values)
        first = False


def map_lookup_batch(fd: int, key_size: int, value_size: int, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a map in few syscalls (BPF_MAP_LOOKUP_BATCH).

    `value_size` is the full value size (per-CPU maps: rounded size times CPUs).
    """
    keys, values = map_lookup_batch_raw(fd, key_size, value_size, chunk)
    return [(keys[i * key_size:(i + 1) * key_size], values[i * value_size:(i + 1) * value_size])
            for i in range(len(keys) // key_size)]


# ---- pinning and ids --------------------------------------------------------------------

def obj_pin(fd: int, path: str) -> None:
    pbuf = ctypes.create_string_buffer(os.fsencode(path))
    _call(BPF_OBJ_PIN, _attr("QII", _addr(pbuf), fd, 0), f"obj_pin {path}")


def obj_get(path: str) -> int:
    """A new fd for the object pinned at `path` (caller closes it)."""
    pbuf = ctypes.create_string_buffer(os.fsencode(path))
    return _call(BPF_OBJ_GET, _attr("QII", _addr(pbuf), 0, 0), f"obj_get {path}")


def prog_get_fd_by_id(prog_id: int) -> int:
    return _call(BPF_PROG_GET_FD_BY_ID, _attr("I", prog_id), f"prog_get_fd_by_id {prog_id}")


def map_get_fd_by_id(map_id: int) -> int:
    return _call(BPF_MAP_GET_FD_BY_ID, _attr("I", map_id), f"map_get_fd_by_id {map_id}")


def link_get_fd_by_id(link_id: int) -> int:
    return _call(BPF_LINK_GET_FD_BY_ID, _attr("I", link_id), f"link_get_fd_by_id {link_id}")


# ---- object info ------------------------------------------------------------------------

_INFO_SIZE = 256  # larger than bpf_prog_info / bpf_map_info / bpf_link_info of this kernel


def obj_get_info_by_fd(fd: int, size: int = _INFO_SIZE) -> bytes:
    """Raw `struct bpf_{prog,map,link}_info` of an fd (see the parse helpers below)."""
    ibuf = ctypes.create_string_buffer(size)
    _call(BPF_OBJ_GET_INFO_BY_FD, _attr("IIQ", fd, size, _addr(ibuf)), "obj_get_info_by_fd")
    return ibuf.raw


def map_info(fd: int) -> dict:
    """type, id, key_size, value_size, max_entries, map_flags and name of a map fd."""
    raw = obj_get_info_by_fd(fd)
    mtype, mid, ksize, vsize, maxent, flags = struct.unpack_from("=6I", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode()
    return {"type": mtype, "id": mid, "key_size": ksize, "value_size": vsize,
            "max_entries": maxent, "map_flags": flags, "name": name}


def prog_info(fd: int) -> dict:
    """type, id and name of a program fd."""
    raw = obj_get_info_by_fd(fd)
    ptype, pid = struct.unpack_from("=II", raw, 0)
    name = raw[64:80].split(b"\0", 1)[0].decode()  # after type, id, tag[8], jited/xlated lens and ptrs
    return {"type": ptype, "id": pid, "name": name}


_PROG_INFO_NR_MAP_IDS = 52  # struct bpf_prog_info: nr_map_ids (u32), then map_ids (u64 pointer)


def prog_map_ids(fd: int, most: int = 64) -> list[int]:
    """The ids of the maps a program uses."""
    ids = (ctypes.c_uint32 * most)()
    ibuf = ctypes.create_string_buffer(_INFO_SIZE)
    struct.pack_into("=IQ", ibuf, _PROG_INFO_NR_MAP_IDS, most, _addr(ids))
    _call(BPF_OBJ_GET_INFO_BY_FD, _attr("IIQ", fd, _INFO_SIZE, _addr(ibuf)), "obj_get_info_by_fd")
    count = struct.unpack_from("=I", ibuf.raw, _PROG_INFO_NR_MAP_IDS)[0]
    return list(ids[:min(count, most)])


def link_info(fd: int) -> dict:
    """type, id and prog_id of a link fd (plus ifindex/attach_type for tcx links)."""
    raw = obj_get_info_by_fd(fd)
    ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    ifindex, attach_type = struct.unpack_from("=II", raw, 16)
    return {"type": ltype, "id": lid, "prog_id": prog_id, "ifindex": ifindex, "attach_type": attach_type}


# ---- links --------------------------------------------------------------------------------

def link_create(prog_fd: int, target: int, attach_type: int, flags: int = 0,
                relative_fd: int = 0, expected_revision: int = 0) -> int:
    """A new link fd. For tcx, `target` is the ifindex and attach_type BPF_TCX_*."""
    attr = _attr("IIIIIIQ", prog_fd, target, attach_type, flags, relative_fd, 0, expected_revision)
    return _call(BPF_LINK_CREATE, attr, f"link_create prog {prog_fd} target {target} type {attach_type}")


def link_update(link_fd: int, new_prog_fd: int, flags: int = 0, old_prog_fd: int = 0) -> None:
    """Swap the program behind a link atomically."""
    _call(BPF_LINK_UPDATE, _attr("IIII", link_fd, new_prog_fd, flags, old_prog_fd), "link_update")


def link_detach(link_fd: int) -> None:
    _call(BPF_LINK_DETACH, _attr("I", link_fd), "link_detach")


BPF_MAP_CREATE = 0
_MAP_NAME_OFFSET = 28  # union bpf_attr, BPF_MAP_CREATE: map_name[16]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: bytes,
               flags: int = 0) -> int:
    """BPF_MAP_CREATE for maps made outside an object (e.g. the meta record); returns the fd."""
    attr = _attr("5I", map_type, key_size, value_size, max_entries, flags)
    struct.pack_into("=16s", attr, _MAP_NAME_OFFSET, name[:15])
    return _call(BPF_MAP_CREATE, attr, f"map_create {name.decode(errors='replace')}")


BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_LINK_GET_NEXT_ID = 31


def next_ids(cmd: int) -> list[int]:
    """Every ID the kernel has of one kind (cmd: BPF_PROG/MAP/LINK_GET_NEXT_ID), ascending."""
    ids, start = [], 0
    while True:
        attr = _attr("I", start)
        try:
            _call(cmd, attr, "get_next_id")
        except OSError:
            return ids  # ENOENT: no more
        start = struct.unpack_from("=I", attr, 4)[0]
        ids.append(start)


def prog_query(target: int, attach_type: int, max_progs: int = 64) -> dict:
    """Programs attached at a hook (for tcx: target = ifindex, attach_type BPF_TCX_*).

    Returns prog_ids and link_ids in chain order (link id 0 for a program
    attached without a link), and the hook's revision.
    """
    prog_ids = (ctypes.c_uint32 * max_progs)()
    link_ids = (ctypes.c_uint32 * max_progs)()
    # target, attach_type, query_flags, attach_flags, prog_ids, count, pad,
    # prog_attach_flags, link_ids, link_attach_flags, revision
    attr = _attr("IIIIQIIQQQQ", target, attach_type, 0, 0, ctypes.addressof(prog_ids), max_progs, 0,
                 0, ctypes.addressof(link_ids), 0, 0)
    _call(BPF_PROG_QUERY, attr, f"prog_query target {target} type {attach_type}")
    count = struct.unpack_from("=I", attr, 24)[0]
    revision = struct.unpack_from("=Q", attr, 56)[0]
    n = min(count, max_progs)
    return {"prog_ids": list(prog_ids[:n]), "link_ids": list(link_ids[:n]), "revision": revision}


# ---- test runs ------------------------------------------------------------------------------

def prog_test_run(prog_fd: int, data_in: bytes, ctx_in: bytes | None = None, repeat: int = 1,
                  data_out_size: int | None = None) -> tuple[int, bytes, int, bytes]:
    """BPF_PROG_TEST_RUN: (retval as u32, data out, average duration in ns per run,
    the context as the program left it; empty without `ctx_in`)."""
    din = ctypes.create_string_buffer(bytes(data_in), len(data_in))
    out_size = data_out_size if data_out_size is not None else len(data_in) + 256
    dout = ctypes.create_string_buffer(out_size)
    cin = ctypes.create_string_buffer(bytes(ctx_in), len(ctx_in)) if ctx_in else None
    cout = ctypes.create_string_buffer(len(ctx_in)) if ctx_in else None
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration,
    # ctx_size_in, ctx_size_out, ctx_in, ctx_out, flags, cpu, batch_size
    ctx_size = len(ctx_in) if ctx_in else 0
    attr = _attr("IIIIQQIIIIQQIII", prog_fd, 0, len(data_in), out_size, _addr(din), _addr(dout),
                 repeat, 0, ctx_size, ctx_size, _addr(cin), _addr(cout), 0, 0, 0)
    _call(BPF_PROG_TEST_RUN, attr, f"prog_test_run prog {prog_fd}")
    _, retval, _, size_out, _, _, _, duration, _, ctx_out_size = struct.unpack_from("=IIIIQQIIII", attr, 0)
    return retval, dout.raw[:size_out], duration, (cout.raw[:ctx_out_size] if cout else b"")
