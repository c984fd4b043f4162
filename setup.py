"""Natra's build hook: a built Natra carries its BPF objects and the model's accelerator.

Owns: compiling bpf/natra.bpf.c (four variants, `make bpf`) and
reference/_fast.c (`make accel`) into the build directory whenever setuptools
builds the package (`pip install .`, `pip wheel .`, an sdist's install), and
tagging the wheel for this platform (it holds ELF files, not pure Python).
Rule: a build without clang fails here, at build time, with the packages to
install; never an installed plugin without a program to load. Everything else
about the package (name, packages, extras, scripts) is in pyproject.toml.
Must not know: compiler flags (the Makefile has them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

HERE = Path(__file__).resolve().parent
HOW_TO_GET_CLANG = ("apt-get install clang libbpf-dev (Debian/Ubuntu), dnf install clang libbpf-devel "
                    "(Fedora); or set CLANG to a clang that targets bpf")


def check_tools() -> None:
    clang = os.environ.get("CLANG", "clang")
    if shutil.which(clang) is None:
        raise CompileError(f"natra: building needs {clang!r} to compile the BPF program "
                           f"(bpf/natra.bpf.c) and none was found: {HOW_TO_GET_CLANG}")
    if shutil.which("make") is None:
        raise CompileError("natra: building needs make (apt-get install make)")


def make(out: Path, fast_so: Path) -> None:
    """`make bpf accel`, the objects into `out`, the accelerator at `fast_so`."""
    check_tools()
    cmd = ["make", "-s", "-C", str(HERE), "bpf", "accel", f"OUT={out}", f"FAST_SO={fast_so}"]
    if os.environ.get("CLANG"):
        cmd.append(f"CLANG={os.environ['CLANG']}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"natra: compiling the BPF objects failed ({' '.join(cmd)}):\n"
                           f"{proc.stderr.strip()}\n(missing headers? {HOW_TO_GET_CLANG})")


class BuildPyWithObjects(build_py):
    def run(self) -> None:
        check_tools()  # before anything is copied: fail first, and say what to install
        super().run()
        if self.editable_mode:  # runs from the checkout: build where the Makefile puts them
            make(HERE / "natra" / "bpf", HERE / "reference" / "_natra_fast.so")
            return
        built = Path(self.build_lib).resolve() / "natra"
        make(built / "bpf", built / "reference" / "_natra_fast.so")
        shutil.copy2(HERE / "bpf" / "natra.h", built / "bpf" / "natra.h")  # as the node bundle ships it


class PlatformDistribution(Distribution):
    """Not pure: the package holds ELF files, so it installs as platlib."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """py3-none-<platform>: any Python 3, but ELF files built for this machine."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=PlatformDistribution, cmdclass={"build_py": BuildPyWithObjects, "bdist_wheel": PlatformWheel})
