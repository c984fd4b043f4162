"""natra-sim's one grammar (simulations/units.py) and its errors: one line, exit 2, never a traceback.

The property test feeds generated values to every option of every
subcommand (the rest of the command line valid and cheap) and requires:
no exception escapes `main`, the exit code is 0 or 2, and a 2 comes with
exactly one line on stderr. Values that would make a run expensive (long
durations, huge rates) are only fed when the option's own parser refuses them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from natra.simulations import cli, knobs, sweep, units  # noqa: E402
from natra.simulations import replay as R  # noqa: E402

BAD_VALUES = ["", " ", "default", "0", "-1", "-0", "1e999", "1e-999", "nan", "inf", "-inf", "1.5.5", "1,2,",
              ",", "%", "0%", "101%", "-5%", "1%%", "1Gi%", "100ms", "1s", "1G", "1Gi", "1e9", "10K", "10KiB",
              "2.5gbit", "0x10", "1_000", "NaN", "1e1000", "99999999999999999999999999999h", "1.5", "3",
              "100", "\x00", "é", "∞", "1 0", "foo=bar", "load=", "=1", "load=-1", "load=1e999",
              "n_flows=0", "flows=1.5", "aimd_ecn=maybe", "window_ns=5", "frame_bytes=1"]
TEXT = st.one_of(st.sampled_from(BAD_VALUES), st.text(max_size=12),
                 st.from_regex(r"-?[0-9]{0,4}(\.[0-9]{0,3})?([eE]-?[0-9]{1,4})?(Ki|Mi|Gi|k|M|G|m|u|n|ms|s|h|%)?",
                               fullmatch=True))


def _rejects(parse, text: str) -> bool:
    try:
        parse(text)
    except argparse.ArgumentTypeError:
        return True
    return False


def _workload_arg_rejected(text: str) -> bool:
    try:
        knobs.parse_options(["zipf"], [text])
    except ValueError:
        return True
    return False


# subcommand -> option -> None (cheap whatever the value) or a predicate "refused, so cheap"
OPTIONS = {
    "replay": {"--rate": lambda t: _rejects(units.rate, t), "--burst": None, "--width": None, "--depth": None,
               "--threshold": None, "--window": None, "--flow-table": None, "--engine": None,
               "--direction": None, "--pod": None},
    "sweep": {"--workload": None, "--width": None, "--depth": None, "--threshold": None, "--window": None,
              "--reserve": None, "--seed": None, "--jobs": None,
              "--rate": lambda t: _rejects(units.rate, t),
              "--duration": lambda t: _rejects(sweep.DURATION, t),
              "--flow-table": lambda t: _rejects(sweep.FLOW_TABLE, t),
              "--workload-arg": _workload_arg_rejected},
    "recommend": {"--precision": None, "--recall": None, "--mice-loss": None, "--width": None,
                  "--depth": None, "--threshold": None, "--window": None, "--seed": None,
                  "--concurrency": None,
                  "--workload": lambda t: t not in ("zipf", "websearch", "datamining", "mix"),
                  "--flows": lambda t: _rejects(units.count, t) or units.count(t) > 100_000,
                  "--seeds": lambda t: _rejects(units.count, t) or units.count(t) > 1000,
                  "--scheduler": lambda t: _rejects(sweep.scheduler_address, t),
                  "--rate": lambda t: _rejects(units.rate, t),
                  "--duration": lambda t: _rejects(sweep.DURATION, t)},
    "workload": {"--seed": None, "--limit": None, "--snaplen": None, "--base-ns": None,
                 "--rate": lambda t: _rejects(units.rate, t),
                 "--duration": lambda t: _rejects(sweep.DURATION, t),
                 "--workload-arg": _workload_arg_rejected},
}
PAIRS = [(c, o) for c, opts in OPTIONS.items() for o in opts]


def _base(command: str, tmp) -> list[str]:
    if command == "replay":
        return ["replay", str(tmp / "tiny.pcap"), "--rate", "10M"]
    if command == "recommend":
        return ["recommend", "--workload", "zipf", "--duration", "5ms", "--rate", "100M", "--width", "256",
                "--depth", "2", "--threshold", "default", "--seeds", "1", "--jobs", "1", "--quiet",
                "--out", str(tmp / "rec")]
    if command == "sweep":
        return ["sweep", "--workload", "zipf", "--duration", "5ms", "--rate", "100M",
                "--out", str(tmp / "out"), "--no-plots", "--quiet", "--jobs", "1"]
    return ["workload", "zipf", str(tmp / "w.pcap"), "--duration", "5ms", "--rate", "100M", "--limit", "20"]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    assert _run(["workload", "zipf", str(tmp / "tiny.pcap"), "--duration", "5ms", "--rate", "10M",
                 "--limit", "30"])[0] == 0
    return tmp


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.sampled_from(PAIRS), text=TEXT)
def test_every_option_of_every_subcommand_fails_in_one_line(scratch, pair, text):
    command, option = pair
    cheap = OPTIONS[command][option]
    assume(cheap is None or cheap(text))
    code, err = _run([*_base(command, scratch), f"{option}={text}"])
    assert "Traceback" not in err
    assert code in ((0, 1, 2) if command == "recommend" else (0, 2)), (code, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"natra-sim {command}: "), err


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--width", "default"], "width 'default'"),
    (["sweep", "--duration", "0"], "duration '0'"),
    (["sweep", "--duration=-1s"], "duration '-1s'"),
    (["sweep", "--duration", "10"], "a duration with a unit"),
    (["sweep", "--threshold", "0"], "threshold '0'"),
    (["sweep", "--threshold=-1%"], "threshold '-1%'"),
    (["sweep", "--window", "100"], "window '100'"),
    (["sweep", "--workload-arg", "frobs=1", "--no-plots"], "has no argument 'frobs'"),
    (["replay", "x.pcap", "--rate", "1G", "--window", "100"], "window '100'"),
    (["replay", "x.pcap", "--rate", "fast"], "rate 'fast'"),
    (["workload", "nope", "x.pcap"], "unknown workload 'nope'"),
    (["workload", "zipf", "x.pcap", "--workload-arg", "load=0"], "load '0'"),
    (["workload", "zipf", "x.pcap", "--rate=  "], "rate '  '"),  # quoted as given, spaces kept
])
def test_the_issue_s_crashes_are_one_line_errors(argv, message):
    code, err = _run(argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_one_grammar_for_rates_sizes_durations_and_shares():
    assert [units.rate(t) for t in ("100M", "1Gi", "1e9")] == [10**8, 2**30, 10**9]
    assert [units.size(t) for t in ("125k", "64Ki", "1e6")] == [125_000, 65_536, 10**6]
    assert [units.duration_ns(t) for t in ("100ms", "1s", "1m30s")] == [10**8, 10**9, 90 * 10**9]
    assert units.share("1%", what="t", of="x") == units.Share(percent=1.0)
    assert units.share("125k", what="t", of="x") == units.Share(bytes=125_000)
    # the same values mean the same in the sweep's grid and the replay's config
    point = sweep.grid(["zipf"], [1024], [4], [units.Share(bytes=125_000)], [100.0], [None],
                       rate_bps=10**9, duration_s=1.0, seed=1)[0]
    assert point.params().threshold_bytes == 125_000
    pct = sweep.grid(["zipf"], [1024], [4], [units.Share(percent=1.0)], [100.0], [None], rate_bps=10**9,
                     duration_s=1.0, seed=1)[0]
    assert pct.params().threshold_bytes == 125_000
    args = cli.build_parser().parse_args(["replay", "x", "--rate", "1G", "--threshold", "1%", "--window",
                                          "100ms"])
    assert R.build_configs(args)[1]["threshold_bytes"] == 125_000
