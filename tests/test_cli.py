"""The `natra` entry point: plugin mode under CNI_COMMAND, a subcommand CLI otherwise."""

import json
import os
import subprocess
import sys

from natra import cli
from natra.cni import versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def natra(args, stdin=b"", **env):
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO, **env}
    return subprocess.run([sys.executable, "-m", "natra", *args], input=stdin, env=full_env,
                          capture_output=True, timeout=60)


def test_plugin_mode_version():
    proc = natra([], b'{"cniVersion": "0.3.1"}', CNI_COMMAND="VERSION")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": "0.3.1",
                                       "supportedVersions": list(versions.SUPPORTED_VERSIONS)}


def test_plugin_mode_error_goes_to_stdout_and_logs_to_stderr(tmp_path):
    proc = natra([], b"{", CNI_COMMAND="ADD", NATRA_LOG_FILE=str(tmp_path / "l"))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 4  # env is checked before stdin
    assert b"natra ERROR" in proc.stderr


def test_plugin_mode_oversized_stdin(tmp_path):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/bin", "NATRA_LOG_FILE": str(tmp_path / "l")}
    proc = natra([], b" " * (5 * 1024 * 1024), **env)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6


def test_version_subcommand():
    proc = natra(["version"])
    assert proc.returncode == 0 and b"1.1.0" in proc.stdout


def test_every_subcommand_is_listed_in_help():
    proc = natra(["--help"])
    assert proc.returncode == 0
    for name in cli.SUBCOMMANDS:
        assert name.encode() in proc.stdout


def test_missing_subcommand_module_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "nt4-missing", cli.Subcommand("natra.nt4_no_such_module", "x"))
    monkeypatch.delenv("CNI_COMMAND", raising=False)
    assert cli.main(["nt4-missing"]) == 2
    assert "not available" in capsys.readouterr().err
