"""A thin ctypes binding of libbpf.so.1: open an object, size its maps, load it.

Owns: the handful of libbpf 1.x calls Natra uses (open, find map/program, set
max_entries, keep a program's verifier log, load, fds, close) and capturing
libbpf's own messages so an error can say what libbpf said. libbpf prints from
the thread that made the call, so each thread keeps its own messages and
threads may load objects at the same time.
Rule: no policy and no retries; a failing call raises `LibbpfError` naming the
call and keeping the errno. Pointers are opaque ints owned by the caller,
who must call `object_close` exactly once.
Must not know: Natra's map names or layouts, pinning, attach modes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")
# libbpf_print_level: WARN=0, INFO=1, DEBUG=2; keep warnings and info.
_KEEP_PRINT_LEVEL = 1
_MESSAGES_KEPT = 200  # the most recent libbpf messages kept for errors
_PRINT_BUF_BYTES = 4096


class LibbpfError(OSError):
    """A libbpf call failed; `.call` names it, `.errno` keeps the cause."""

    def __init__(self, err: int, call: str, detail: str = ""):
        text = f"libbpf {call}: {os.strerror(err) if err else 'failed'}"
        super().__init__(err, text + (f"\n{detail}" if detail else ""))
        self.call = call


_lib = None
_lib_lock = threading.Lock()
_local = threading.local()  # .messages: this thread's recent libbpf messages
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_print_cb = None  # kept alive for as long as libbpf may call it


def _thread_messages() -> list[str]:
    try:
        return _local.messages
    except AttributeError:
        _local.messages = []
        return _local.messages


def _on_print(level: int, fmt: bytes, va_list: int) -> int:
    if level > _KEEP_PRINT_LEVEL:
        return 0
    buf = ctypes.create_string_buffer(_PRINT_BUF_BYTES)
    n = _libc.vsnprintf(buf, _PRINT_BUF_BYTES, fmt, ctypes.c_void_p(va_list))
    messages = _thread_messages()
    messages.append(buf.value.decode(errors="replace").rstrip("\n"))
    del messages[:-_MESSAGES_KEPT]
    return n


_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_libc.vsnprintf.restype = ctypes.c_int


def _declare(lib) -> None:
    vp, cp, i, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
    sigs = {
        "bpf_object__open_file": ([cp, vp], vp),
        "bpf_object__find_map_by_name": ([vp, cp], vp),
        "bpf_object__find_program_by_name": ([vp, cp], vp),
        "bpf_map__set_max_entries": ([vp, ctypes.c_uint32], i),
        "bpf_program__set_log_buf": ([vp, ctypes.c_char_p, sz], i),
        "bpf_program__set_log_level": ([vp, ctypes.c_uint32], i),
        "bpf_object__load": ([vp], i),
        "bpf_program__fd": ([vp], i),
        "bpf_map__fd": ([vp], i),
        "bpf_object__close": ([vp], None),
        "bpf_program__set_autoload": ([vp, ctypes.c_bool], i),
        "bpf_map__reuse_fd": ([vp, i], i),
        "bpf_map__set_inner_map_fd": ([vp, i], i),
        "libbpf_set_print": ([_PRINT_FN], vp),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res


def lib():
    """libbpf, loaded and declared once per process (with its messages captured)."""
    global _lib, _print_cb
    with _lib_lock:
        if _lib is None:
            found = None
            errors = []
            for name in LIBBPF_NAMES:
                try:
                    found = ctypes.CDLL(name, use_errno=True)
                    break
                except OSError as e:
                    errors.append(str(e))
            if found is None:
                raise LibbpfError(0, "dlopen", "libbpf.so.1 not found (apt-get install libbpf1): "
                                  + "; ".join(errors))
            _declare(found)
            _print_cb = _PRINT_FN(_on_print)
            found.libbpf_set_print(_print_cb)
            _lib = found
        return _lib


def recent_messages() -> str:
    """libbpf's recent warnings to this thread, oldest first (for error reports)."""
    return "\n".join(_thread_messages())


def clear_messages() -> None:
    _thread_messages().clear()


def _errno_or(default: int) -> int:
    return ctypes.get_errno() or default


def object_open(path: str) -> int:
    ptr = lib().bpf_object__open_file(os.fsencode(path), None)
    if not ptr:
        raise LibbpfError(_errno_or(0), f"bpf_object__open_file {path}", recent_messages())
    return ptr


def find_map(obj: int, name: str) -> int:
    ptr = lib().bpf_object__find_map_by_name(obj, name.encode())
    if not ptr:
        raise LibbpfError(_errno_or(2), f"bpf_object__find_map_by_name {name}")
    return ptr


def find_program(obj: int, name: str) -> int:
    ptr = lib().bpf_object__find_program_by_name(obj, name.encode())
    if not ptr:
        raise LibbpfError(_errno_or(2), f"bpf_object__find_program_by_name {name}")
    return ptr


def map_set_max_entries(map_ptr: int, entries: int) -> None:
    err = lib().bpf_map__set_max_entries(map_ptr, entries)
    if err:
        raise LibbpfError(-err, f"bpf_map__set_max_entries {entries}")


def program_set_log_buf(prog: int, buf: ctypes.Array) -> None:
    """Give the program a verifier log buffer (filled only if the load fails).

    The caller keeps `buf` alive until the object is closed.
    """
    err = lib().bpf_program__set_log_buf(prog, buf, len(buf))
    if err:
        raise LibbpfError(-err, "bpf_program__set_log_buf")


def program_set_autoload(prog: int, autoload: bool) -> None:
    """Whether `object_load` loads this program (False: its maps are still made)."""
    err = lib().bpf_program__set_autoload(prog, autoload)
    if err:
        raise LibbpfError(-err, "bpf_program__set_autoload")


def map_reuse_fd(map_ptr: int, fd: int) -> None:
    """Have `object_load` bind the programs to this existing map instead of making one."""
    err = lib().bpf_map__reuse_fd(map_ptr, fd)
    if err:
        raise LibbpfError(-err, "bpf_map__reuse_fd", recent_messages())


def map_set_inner_map_fd(map_ptr: int, fd: int) -> None:
    """A map of maps: the map whose kind, sizes and value layout every inner map must have."""
    err = lib().bpf_map__set_inner_map_fd(map_ptr, fd)
    if err:
        raise LibbpfError(-err, "bpf_map__set_inner_map_fd")


def object_load(obj: int) -> None:
    err = lib().bpf_object__load(obj)
    if err:
        raise LibbpfError(-err, "bpf_object__load", recent_messages())


def program_fd(prog: int) -> int:
    fd = lib().bpf_program__fd(prog)
    if fd < 0:
        raise LibbpfError(-fd, "bpf_program__fd")
    return fd


def map_fd(map_ptr: int) -> int:
    fd = lib().bpf_map__fd(map_ptr)
    if fd < 0:
        raise LibbpfError(-fd, "bpf_map__fd")
    return fd


def object_close(obj: int) -> None:
    lib().bpf_object__close(obj)
