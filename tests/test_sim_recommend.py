"""`natra-sim recommend` (issue #20): the tuning question as one command."""

from __future__ import annotations

import contextlib
import io
import json

from natra.simulations import cli, recommend

BASE = [
    "recommend",
    "--rate",
    "100M",
    "--workload",
    "zipf",
    "--flows",
    "2000",
    "--duration",
    "300ms",
    "--seeds",
    "2",
    "--jobs",
    "1",
    "--quiet",
]


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_recommends_the_smallest_sketch_meeting_every_target_on_every_seed(tmp_path):
    code, out, err = run(
        *BASE,
        "--width",
        "16,256,1024",
        "--depth",
        "1,4",
        "--threshold",
        "default",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    best, configs = doc["recommended"], doc["configurations"]
    assert best["meets"] and best["seeds"] == 2
    assert best["worst_precision"] >= 0.99 and best["worst_recall"] >= 0.99 and best["worst_mice_loss"] == 0
    assert all(c["state_bytes"] >= best["state_bytes"] for c in configs if c["meets"])
    assert any(not c["meets"] for c in configs)  # 16 x 1 cannot tell 2000 flows apart
    assert doc["runner_up"]["state_bytes"] >= best["state_bytes"]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    code, text, _ = run(
        *BASE, "--width", "16,256,1024", "--depth", "1,4", "--threshold", "default", "--out", str(tmp_path)
    )  # the same grid again: every point resumed
    assert code == 0 and "recommended: width" in text and "runner-up:" in text and "confidence" in text


def test_an_unreachable_target_is_said_so_with_the_closest(tmp_path):
    code, out, _ = run(*BASE, "--width", "8", "--depth", "1", "--out", str(tmp_path))
    assert code == 1
    assert "no configuration in the grid meets the targets" in out and "closest: width 8 x depth 1" in out


def test_a_concurrency_the_workload_cannot_have_is_a_one_line_error(tmp_path):
    code, _, err = run(
        "recommend", "--workload", "websearch", "--concurrency", "20000", "--out", str(tmp_path)
    )
    assert code == 2 and "GB in flight" in err and len(err.strip().splitlines()) == 1


def test_judge_uses_the_worst_seed():
    rows = [
        {
            "width": 64,
            "depth": 2,
            "threshold_pct": None,
            "threshold_fixed_bytes": None,
            "window_ms": 100.0,
            "threshold_bytes": 1,
            "state_bytes": 10,
            "precision": p,
            "recall": 1.0,
            "mice_loss": 0.0,
        }
        for p in (1.0, 0.98)
    ]
    (c,) = recommend.judge(rows, {"precision": 0.99, "recall": 0.99, "mice_loss": 0.0})
    assert not c["meets"] and c["worst_precision"] == 0.98


# ---- recommend --pcap: a capture instead of a generated workload ----------------------------------

CAPTURE_GRID = ["--rate", "100M", "--width", "16,256", "--depth", "1,4", "--threshold", "default,2%",
                "--jobs", "1", "--quiet", "--json"]


def to_sll2_with_acks(source, target):
    """The Ethernet capture `source` as `tcpdump -i any` writes it (Linux cooked v2, link type 276,
    the same snapshot), with the Pod's ACK after every data frame (outgoing, 66 bytes)."""
    import struct

    from natra.simulations import pcapio
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    records = list(pcapio.read_capture(source))
    snap = max(len(r.frame) for r in records)
    with open(target, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, pcapio.LINKTYPE_LINUX_SLL2))
        for r in records:
            src, dst = ".".join(map(str, r.frame[26:30])), ".".join(map(str, r.frame[30:34]))
            sport, dport = struct.unpack("!HH", r.frame[34:38])
            ack = bytes(Ether() / IP(src=dst, dst=src) / TCP(sport=dport, dport=sport, flags="A"))
            ack += bytes(66 - len(ack))
            for t, frame, orig, pkttype in ((r.time_ns, r.frame, r.orig_len, pcapio.PACKET_HOST),
                                            (r.time_ns + 500, ack, 66, pcapio.PACKET_OUTGOING)):
                head = frame[12:14] + b"\x00\x00" + struct.pack("!IHBB8s", 3, 1, pkttype, 6, b"\x02" * 6)
                data = (head + frame[14:])[: snap + pcapio.SLL2_HLEN - pcapio.ETH_HLEN]
                fh.write(struct.pack("<IIII", t // 10**9, t % 10**9, len(data),
                                     orig + pcapio.SLL2_HLEN - pcapio.ETH_HLEN))
                fh.write(data)


def test_recommend_on_a_capture_headers_only_full_or_cooked_gives_one_answer(tmp_path):
    """The same traffic as a whole-frame Ethernet capture, a headers-only one, and a Linux cooked
    (SLL2) one with the Pod's ACKs interleaved, read with --pod: identical configurations."""
    pod = "10.244.1.10"  # the generated workloads' Pod
    headers, full, cooked = tmp_path / "h.pcap", tmp_path / "f.pcap", tmp_path / "c.pcap"
    for path, snaplen in ((headers, []), (full, ["--snaplen", "0"])):
        code, _, err = run("workload", "zipf", str(path), "--rate", "100M", "--duration", "600ms",
                           "--workload-arg", "n_flows=3000", "--quiet", *snaplen)
        assert code == 0, err
    to_sll2_with_acks(headers, cooked)
    answers = []
    for path, extra in ((full, []), (headers, []), (cooked, ["--pod", pod])):
        code, out, err = run("recommend", "--pcap", str(path), *extra, *CAPTURE_GRID,
                             "--out", str(tmp_path / path.stem))
        assert code == 0, err
        doc = json.loads(out)
        assert doc["recommended"]["meets"] and doc["recommended"]["seeds"] == 1
        answers.append((doc["recommended"], doc["configurations"]))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][1][0]["flows"] > 1000
    assert full.stat().st_size > 5 * headers.stat().st_size  # the headers-only file is a fraction

    code, text, err = run("recommend", "--pcap", str(cooked), *CAPTURE_GRID[:-1], "--out",
                          str(tmp_path / "t"))
    assert code == 0 and "capture " in text and "met on this capture" in text, err
    code, _, err = run("recommend", "--pcap", str(cooked), "--pod", pod, "--direction", "egress",
                       *CAPTURE_GRID, "--out", str(tmp_path / "e"))  # the ACKs alone: no heavy hitter
    assert code in (0, 1), err


def test_recommend_pcap_refuses_what_it_cannot_use_in_one_line(tmp_path):
    pcap = tmp_path / "w.pcap"
    assert run("workload", "mix", str(pcap), "--duration", "20ms", "--quiet")[0] == 0
    for argv, says in (
        (["--pcap", str(tmp_path / "missing.pcap")], "No such file"),
        (["--pcap", str(pcap), "--workload", "zipf"], "replaces a generated workload: drop --workload"),
        (["--pcap", str(pcap), "--concurrency", "10"], "drop --concurrency"),
        (["--pcap", str(pcap), "--pod", "not-an-address"], "pod 'not-an-address'"),
        (["--pcap", str(pcap), "--pod", "10.9.9.9"], "no frame to or from 10.9.9.9"),
        (["--pod", "10.9.9.9"], "--pod selects frames of a capture: it needs --pcap"),
        (["--pcap", str(tmp_path)], "Is a directory"),
    ):
        code, _, err = run("recommend", *argv, "--out", str(tmp_path / "r"), "--quiet")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_recommend_pcap_on_two_dask_workers_sends_them_the_capture(tmp_path, monkeypatch):
    """The caller reads the capture once and primes each worker with it: the answer equals the
    in-process one, and the workers never open the file (it is gone before they run)."""
    import pytest

    pytest.importorskip("distributed")
    from natra.simulations import captured, runner

    pcap = tmp_path / "z.pcap"
    assert run("workload", "zipf", str(pcap), "--rate", "100M", "--duration", "300ms", "--quiet")[0] == 0
    code, out, err = run("recommend", "--pcap", str(pcap), *CAPTURE_GRID, "--out", str(tmp_path / "one"))
    assert code == 0, err
    here = json.loads(out)["configurations"]
    real_run_on_dask = runner.run_on_dask

    def file_gone_first(todo, *args, **kwargs):
        pcap.unlink()
        return real_run_on_dask(todo, *args, **kwargs)

    monkeypatch.setattr(runner, "run_on_dask", file_gone_first)
    grid = [a if a != "1" else "2" for a in CAPTURE_GRID]  # --jobs 2
    code, out, err = run("recommend", "--pcap", str(pcap), *grid, "--out", str(tmp_path / "two"))
    assert code == 0, err
    assert json.loads(out)["configurations"] == here
    assert captured.LOADED  # the caller kept what it read
