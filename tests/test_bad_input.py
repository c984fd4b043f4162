"""Every command, every bad input: one line naming the bad value, a non-zero exit, no traceback.

A Hypothesis property drives every console script and subcommand (`natra`
status/top/exporter/install/uninstall/demo/version, `natra-sim`
replay/sweep/workload, and `natra` as the CNI plugin with its environment)
with generated bad values: numbers, units, ports, paths and environment
variables. The node tools must exit non-zero with a message on stderr that
names the value and carries no traceback; the CNI plugin must answer with its
error JSON (exit 1) naming the value. Runs in-process (the same `main`
functions the console scripts call), and a few cases as real subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from natra.simulations import cli as sim_cli

from natra import cli
from natra.cni.plugin import run as cni_run

MISSING = "/nonexistent-natra-bad-input"
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _float_ok(text: str, low: float, high: float) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return not math.isnan(value) and low <= value < high


def _int_ok(text: str, low: int = 0) -> bool:
    try:
        return int(text) >= low
    except ValueError:
        return False


# Not "--": argparse (3.11) reads `--opt=--` as an empty list without calling the option's type.
TRICKY = ["abc", "-1", "nan", "inf", "-inf", "1e999", "10m", "5s", "0x10", "", " ", "1,5", "½", "١٢", "1 2",
          "-", "99999999999999999999999", "1.5.2", "1e", "e1", "\x7f", "-0.5", "NaN"]


def bad(valid) -> st.SearchStrategy[str]:
    """Text the option must refuse: tricky values and random text, without the ones `valid` accepts."""
    texts = st.one_of(st.sampled_from(TRICKY), st.text(st.characters(blacklist_categories=("Cs",),
                                                                      blacklist_characters="\x00"),
                                                       max_size=12))
    # argparse takes "-x" style text as an option, not a value: use --opt=value forms below.
    return texts.filter(lambda t: t != "--" and not valid(t))


def run_node(argv: list[str], env: dict[str, str] | None = None, main=cli.main) -> tuple[int, str]:
    """(exit code, stderr) of one in-process run; any exception but SystemExit fails the test."""
    err, out = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, err.getvalue()


def assert_refused(code: int, err: str, value: str) -> None:
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no message"
    last = lines[-1]  # argparse prints its usage first, then the one line
    assert repr(value) in last or (value.strip() and value in last), (value, err)


# option -> what it accepts
NODE_OPTIONS = {
    ("status", "--top"): lambda t: _int_ok(t),
    ("top", "--interval"): lambda t: _float_ok(t, 0, 86400),
    ("top", "--iterations"): lambda t: _int_ok(t),
    ("exporter", "--top"): lambda t: _int_ok(t),
    ("install", "--wait-for-config"): lambda t: _float_ok(t, 0, 86400.0000001),
}


@pytest.mark.parametrize("command,option", sorted(NODE_OPTIONS))
@EXAMPLES
@given(data=st.data())
def test_numbers_and_units(command, option, data):
    value = data.draw(bad(NODE_OPTIONS[(command, option)]))
    extra = ["--no-bundle"] if command == "install" else []
    code, err = run_node([command, f"{option}={value}", *extra, "--root" if command != "install" else
                          "--host-root", MISSING])
    assert_refused(code, err, value)


def _listen_ok(text: str) -> bool:
    from natra.node.exporter import ListenError, parse_listen

    try:
        parse_listen(text)
    except ListenError:
        return False
    return True


@EXAMPLES
@given(value=st.one_of(bad(_listen_ok), st.integers(65536, 10**9).map(lambda p: f"127.0.0.1:{p}"),
                       st.integers(max_value=-1).map(lambda p: f":{p}")))
def test_exporter_ports(value):
    code, err = run_node(["exporter", f"--listen={value}"])
    assert_refused(code, err, value)


@EXAMPLES
@given(value=st.from_regex(r"/nonexistent-[a-z0-9]{1,8}(/[a-z]{1,5})?", fullmatch=True))
def test_paths(value):
    for argv in (["status", "--root", value], ["top", "--once", "--root", value],
                 ["install", "--no-bundle", "--host-root", value], ["uninstall", "--host-root", value],
                 ["install", "--no-bundle", "--host-root", "/", "--defaults-file", value]):
        code, err = run_node(argv)
        assert_refused(code, err, value)


INSTALL_ENV = {
    "NATRA_WAIT_FOR_CONFIG_S": lambda t: _float_ok(t, 0, 86400.0000001),
    "NATRA_REPLACE_BANDWIDTH": lambda t: t.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no",
                                                                "off", ""},
    "NATRA_MOUNT_BPFFS": lambda t: t.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off",
                                                          ""},
}


@pytest.mark.parametrize("variable", sorted(INSTALL_ENV))
@EXAMPLES
@given(data=st.data())
def test_environment_variables(variable, data):
    value = data.draw(bad(INSTALL_ENV[variable]))
    code, err = run_node(["install", "--no-bundle", "--host-root", MISSING], env={variable: value})
    assert_refused(code, err, value)
    assert variable in err


KNOWN_KEYS = None


@EXAMPLES
@given(key=st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=14))
def test_unknown_default_keys_are_refused_with_a_suggestion(key, tmp_path_factory):
    from natra.cni.tuning import ENTRY_KEYS, natra_keys

    if key in natra_keys() or key.casefold() in {k.casefold() for k in ENTRY_KEYS}:
        return
    code, err = run_node(["install", "--no-bundle", "--host-root", "/", "--default", f"{key}=1"])
    assert_refused(code, err, key)


def test_a_typo_gets_the_nearest_key():
    code, err = run_node(["install", "--no-bundle", "--host-root", "/", "--default", "widht=2048"])
    assert code == 1 and "unknown key 'widht': did you mean 'width'?" in err


DEMO_OPTIONS = {
    "--rate": lambda t: False, "--burst": lambda t: False,  # filtered below by the demo's own checks
    "--duration": lambda t: _float_ok(t, 1e-300, 3600.0000001), "--size": lambda t: _int_ok(t, 1),
}


def _demo_accepts(option: str, text: str) -> bool:
    from natra.lab import demo

    check = {"--rate": demo._rate_arg, "--burst": demo._burst_arg, "--duration": demo._duration_arg,
             "--size": demo._size_arg}[option]
    try:
        check(text)
    except Exception:  # noqa: BLE001 - argparse's ArgumentTypeError
        return False
    return True


@pytest.mark.parametrize("option", sorted(DEMO_OPTIONS))
@EXAMPLES
@given(data=st.data())
def test_demo_options(option, data):
    value = data.draw(bad(lambda t: _demo_accepts(option, t)))
    code, err = run_node(["demo", f"{option}={value}"])
    assert_refused(code, err, value)


SIM_CASES = {
    ("workload", "--rate"): ["workload", "mix", "/tmp/nt-unused.pcap"],
    ("workload", "--duration"): ["workload", "mix", "/tmp/nt-unused.pcap"],
    ("workload", "--seed"): ["workload", "mix", "/tmp/nt-unused.pcap"],
    ("workload", "--limit"): ["workload", "mix", "/tmp/nt-unused.pcap"],
    ("replay", "--rate"): ["replay", MISSING + ".pcap"],
    ("replay", "--width"): ["replay", MISSING + ".pcap", "--rate", "10M"],
    ("sweep", "--rate"): ["sweep", "--workload", "mix"],
    ("sweep", "--duration"): ["sweep", "--workload", "mix"],
}


# natra-sim's counts: a whole number, written plainly or as a quantity (4Ki, 1M, 1e4), in range.
SIM_COUNT_RANGE = {"--seed": (0, 2**63 - 1), "--limit": (1, 1 << 40), "--width": (1, 65536)}


def _sim_count_ok(option: str, text: str) -> bool:
    from natra.cni.quantity import QuantityError, parse_quantity

    try:
        value = parse_quantity(text)
    except (QuantityError, ValueError, OverflowError):
        return False
    low, high = SIM_COUNT_RANGE[option]
    whole = value.denominator == 1 and low <= value <= high
    return whole and (option != "--width" or int(value) & (int(value) - 1) == 0)


def _sim_value_ok(option: str, text: str) -> bool:
    if option in SIM_COUNT_RANGE:
        return _sim_count_ok(option, text)
    if option == "--rate":
        from natra.cni.quantity import QuantityError, parse_bandwidth

        try:
            return parse_bandwidth(text) > 0
        except (QuantityError, ValueError):
            return False
    from natra.cni.tuning import TuningError, read_duration

    try:
        read_duration(text, "duration")
    except TuningError:
        return False
    return True


@pytest.mark.parametrize("command,option", sorted(SIM_CASES))
@EXAMPLES
@given(data=st.data())
def test_natra_sim(command, option, data):
    value = data.draw(bad(lambda t: _sim_value_ok(option, t)))
    code, err = run_node([*SIM_CASES[(command, option)], f"{option}={value}"], main=sim_cli.main)
    assert_refused(code, err, value)


# ---- the CNI plugin: its environment and its config -------------------------------------------

def cni(env: dict, config: dict | None = None) -> tuple[int, dict]:
    body = {"cniVersion": "1.0.0", "name": "net", "type": "natra", **(config or {})}
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "nt4-bad", "CNI_NETNS": "/run/netns/nt4-none",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "NATRA_LOG_FILE": "",
            "NATRA_STATE_DIR": MISSING, "NATRA_BPFFS_ROOT": MISSING}
    code, out = cni_run({**base, **env}, json.dumps(body).encode(), now=0, stderr=io.StringIO())
    return code, json.loads(out)


def assert_cni_error(code: int, out: dict, value: str) -> None:
    assert code == 1 and set(out) == {"cniVersion", "code", "msg", "details"}, out
    said = out["msg"] + " " + out["details"]
    assert repr(value) in said or value in said, (value, out)


@EXAMPLES
@given(value=st.text(min_size=1, max_size=10).filter(
    lambda t: t not in ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC") and "\x00" not in t))
def test_cni_command(value):
    assert_cni_error(*cni({"CNI_COMMAND": value}), value)


@EXAMPLES
@given(value=st.text(min_size=1, max_size=20).filter(
    lambda t: "\x00" not in t and (not t[0].isascii() or not t[0].isalnum()
                                   or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in t))))
def test_cni_container_id(value):
    assert_cni_error(*cni({"CNI_CONTAINERID": value}), value)


@EXAMPLES
@given(value=st.one_of(st.text(min_size=16, max_size=30).filter(lambda t: "\x00" not in t),
                       st.sampled_from([".", "..", "a/b", "a:b", "a b"])))
def test_cni_ifname(value):
    assert_cni_error(*cni({"CNI_IFNAME": value}), value)


@EXAMPLES
@given(key=st.sampled_from(["width", "depth", "window", "maxBurstTime", "flowTable", "logMaxBytes"]),
       value=st.one_of(st.sampled_from(TRICKY), st.integers(max_value=-1).map(str)))
def test_cni_config_values(key, value):
    from natra.cni.tuning import TuningError, cluster_settings

    try:
        cluster_settings({key: value})
    except Exception as e:  # noqa: BLE001
        if not isinstance(getattr(e, "__cause__", None), TuningError):
            raise
    else:
        return  # a value this knob accepts (a quantity string, say)
    code, out = cni({}, {key: value})
    assert code == 1 and out["code"] == 7 and key in out["details"], out


@EXAMPLES
@given(key=st.text(st.characters(whitelist_categories=("Ll", "Lu")), min_size=1, max_size=12))
def test_cni_unknown_config_keys(key):
    from natra.cni.tuning import ENTRY_KEYS, natra_keys

    if key in natra_keys() or key.casefold() in {k.casefold() for k in ENTRY_KEYS}:
        return
    code, out = cni({}, {key: 1})
    assert code == 1 and out["code"] == 7 and repr(key) in out["details"], out


# ---- the real console scripts -------------------------------------------------------------------

@pytest.mark.parametrize("argv,env,value", [
    (["natra", "exporter", "--listen", "127.0.0.1:abc"], {}, "127.0.0.1:abc"),
    (["natra", "exporter", "--listen", ":99999"], {}, ":99999"),
    (["natra", "install", "--no-bundle"], {"NATRA_WAIT_FOR_CONFIG_S": "10m"}, "10m"),
    (["natra", "status", "--root", MISSING], {}, MISSING),
    (["natra", "install", "--no-bundle", "--default", "widht=2048"], {}, "widht"),
    (["natra-sim", "workload", "mix", "/tmp/nt-unused.pcap", "--rate", "fast"], {}, "fast"),
    (["natra", "frobnicate"], {}, "frobnicate"),
])
def test_console_scripts(argv, env, value):
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert value in done.stderr.strip().splitlines()[-1], done.stderr


def test_cni_entry_point_as_a_runtime_calls_it():
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "nt4 bad", "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "NATRA_LOG_FILE": ""}
    done = subprocess.run(["natra"], input=b'{"cniVersion": "1.0.0", "name": "n", "type": "natra"}',
                          capture_output=True, env=env, timeout=60)
    out = json.loads(done.stdout)
    assert done.returncode == 1 and "nt4 bad" in out["msg"] + out["details"]
    assert b"Traceback" not in done.stderr


def test_install_help_lists_every_natra_variable_it_reads():
    import inspect
    import re

    from natra.node import install_cli

    read = set(re.findall(r'"(NATRA_[A-Z_]+)"', inspect.getsource(install_cli))) - {"NATRA_ACTION"}
    for argv in (["install", "--help"], ["uninstall", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main(argv)
        shown = set(re.findall(r"NATRA_[A-Z_]+", out.getvalue()))
        if argv[0] == "install":
            assert read <= shown, read - shown
        else:
            assert set(install_cli.UNINSTALL_ENV) <= shown
