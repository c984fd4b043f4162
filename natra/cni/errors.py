"""CNI error kinds and the codes the spec gives them.

Owns: the one table from an error kind to its CNI code, and `CniError`, the
only exception that becomes an error JSON on stdout. Codes 1-11 and 50-51 are
the spec's; 100 and up are Natra's own and are listed here too.
Rule: every error says what went wrong (`msg`) and what to look at (`details`);
no code is ever 999.
Must not know: how errors are printed, the kernel, the data path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD at all
    LIMITED_CONNECTIVITY = 51  # STATUS: not used by Natra, listed for completeness
    # Natra's own (spec: 100 and up).
    STATE_MISSING = 100  # CHECK: limits configured but nothing of ours in the kernel
    STATE_DRIFT = 101  # CHECK: kernel state differs from what the request asks for
    STATE_UNREADABLE = 102  # CHECK: the kernel state could not be read back
    GC_INCOMPLETE = 103  # GC: some stale attachments could not be removed


@dataclass
class CniError(Exception):
    """An error the runtime sees: exit code 1 and this JSON on stdout."""

    code: int
    msg: str
    details: str = ""

    @classmethod
    def of(cls, kind: Kind, msg: str, details: str = "") -> CniError:
        return cls(kind.value, msg, details)

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_json(self, cni_version: str) -> dict:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}

    def encode(self, cni_version: str) -> bytes:
        return json.dumps(self.to_json(cni_version)).encode() + b"\n"
