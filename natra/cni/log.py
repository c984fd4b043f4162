"""The plugin's log: one line per event, to stderr and to a size-bounded file.

Owns: the line format (`<UTC time> natra <LEVEL> <command> <container> <pod>:
<message>`) and the rotation rule (when the file would pass `max_bytes`, it
becomes `<file>.1`, replacing the older copy). Each line is one write() on an
O_APPEND descriptor, so parallel plugin processes never interleave lines.
Rule: logging never fails the plugin: a directory that cannot be written, a
full disk or a closed stderr are swallowed. Callers pass `now` (ns since the
epoch). Callers never pass Pod annotation values other than natra.io/ ones.
Must not know: CNI semantics, the kernel.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

LOG_FILE_MODE = 0o640
LOG_DIR_MODE = 0o750
MAX_LINE_CHARS = 4000  # a verifier log belongs in the error chain, not a whole file per line


@dataclass
class Log:
    path: str = ""  # "" writes to stderr only
    max_bytes: int = 4 * 1024 * 1024
    stderr: object = field(default_factory=lambda: sys.stderr)
    context: str = "-"  # "<command> <container> <pod>"
    lines: list[str] = field(default_factory=list)  # every line written, for the caller
    _file_failed: bool = False  # the log file could not be written (said once on stderr)

    def event(self, now_ns: int, level: str, message: str) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ns // 1_000_000_000))
        millis = now_ns // 1_000_000 % 1000
        text = " ".join(message.split())[:MAX_LINE_CHARS]
        line = f"{stamp}.{millis:03d}Z natra {level} {self.context}: {text}"
        self.lines.append(line)
        try:
            self.stderr.write(line + "\n")
            self.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        if self.path:
            self._append(line + "\n")
        return line

    def info(self, now_ns: int, message: str) -> str:
        return self.event(now_ns, "INFO", message)

    def warn(self, now_ns: int, message: str) -> str:
        return self.event(now_ns, "WARN", message)

    def error(self, now_ns: int, message: str) -> str:
        return self.event(now_ns, "ERROR", message)

    def _append(self, line: str) -> None:
        data = line.encode("utf-8", "replace")
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=LOG_DIR_MODE, exist_ok=True)
            try:
                if os.path.getsize(self.path) + len(data) > self.max_bytes:
                    os.replace(self.path, self.path + ".1")
            except FileNotFoundError:
                pass
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:  # never fails the plugin; says so once on stderr
            if not self._file_failed:
                self._file_failed = True
                try:
                    self.stderr.write(f"natra WARN {self.context}: cannot write log file {self.path}: "
                                      f"{exc.strerror or exc}\n")
                except (OSError, ValueError, AttributeError):
                    pass
