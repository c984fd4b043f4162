"""Console scripts without an extra: one line naming the extra, exit 2, no traceback.

The node package has no numpy, scapy, matplotlib or tqdm (`natra[sim]`) and no
grpcio (`natra[lab]`). Each case runs in a fresh interpreter in which the
extra's module is made unimportable (None in sys.modules), as in a venv
without it; tests/kernel/test_wheel.py does the same with a real install.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from natra.cli import missing_extra

BLOCK = "import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"


def run(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=blocked) + code],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [["--help"], ["replay", "x.pcap", "--rate", "10M"], ["sweep", "--help"]])
def test_natra_sim_without_the_sim_extra_names_it(argv):
    out = run(("numpy", "scapy", "tqdm", "matplotlib"),
              f"from natra.simulations.cli import main\nsys.exit(main({argv!r}))")
    assert out.returncode == 2, out.stderr
    assert "pip install 'natra[sim]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_natra_sim_help_with_the_extra_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "natra.simulations.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "replay" in out.stdout and "sweep" in out.stdout


def test_node_commands_run_without_the_sim_extra():
    out = run(("numpy", "scapy", "tqdm", "matplotlib", "pyroute2"),  # pyroute2: only the tests use it
              "from natra.cli import main\nsys.exit(main(['status', '--help']))")
    assert out.returncode == 0, out.stderr


def test_missing_extra_names_the_extra_only_for_extras():
    assert missing_extra(ModuleNotFoundError("x", name="numpy.linalg")) == (
        "needs the 'sim' extra (numpy.linalg is not installed): pip install 'natra[sim]'")
    assert "natra[lab]" in missing_extra(ModuleNotFoundError("x", name="grpc"))
    assert missing_extra(ModuleNotFoundError("x", name="prometheus_client")) is None  # base dependency: a bug
    assert missing_extra(ImportError("x")) is None
