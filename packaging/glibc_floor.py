#!/usr/bin/env python3
"""The oldest glibc a directory of ELF files can run on.

    glibc_floor.py DIR [--max 2.31]

Owns: reading the glibc symbol versions every ELF file under DIR requires
(the "Version References" that `objdump -p` prints) and naming the newest
one. With --max, exits 1 when a file needs a newer glibc than that, so a
bundle built on a too-new base fails its build instead of a node's Pod ADD.
Standard library and binutils only: it runs in the image's bundle stage.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
REFERENCE = re.compile(r"\bGLIBC_(\d+)\.(\d+)(?:\.(\d+))?\b")


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def required_versions(path: Path) -> set[tuple[int, ...]]:
    """The GLIBC_x.y versions that PATH's version references name."""
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True,
                         check=True).stdout
    refs = out.split("Version References:", 1)
    if len(refs) < 2:
        return set()
    return {tuple(int(g) for g in m.groups() if g is not None) for m in REFERENCE.finditer(refs[1])}


def floor(root: Path) -> tuple[tuple[int, ...], dict[Path, tuple[int, ...]]]:
    """(newest version required overall, newest version per ELF file)."""
    per_file: dict[Path, tuple[int, ...]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink() or not is_elf(path):
                continue
            versions = required_versions(path)
            per_file[path] = max(versions) if versions else (0,)
    overall = max(per_file.values(), default=(0,))
    return overall, per_file


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--max", help="fail when any file needs a newer glibc than this")
    args = parser.parse_args(argv)
    overall, per_file = floor(args.root)
    if not per_file:
        print(f"glibc_floor: no ELF files under {args.root}", file=sys.stderr)
        return 1
    print(f"glibc_floor: {len(per_file)} ELF files under {args.root} need glibc >= {dotted(overall)}")
    if args.max is None:
        return 0
    limit = tuple(int(p) for p in args.max.split("."))
    too_new = sorted((v, p) for p, v in per_file.items() if v > limit)
    for version, path in too_new:
        print(f"glibc_floor: {path} needs GLIBC_{dotted(version)} > {args.max}", file=sys.stderr)
    return 1 if too_new else 0


if __name__ == "__main__":
    sys.exit(main())
