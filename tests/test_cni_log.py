"""The plugin log: one line per event, bounded size, never fails."""

import io
import os

from natra.cni.log import Log

NOW = 1_700_000_000_123_456_789


def test_line_format_and_stderr(tmp_path):
    err = io.StringIO()
    log = Log(path=str(tmp_path / "a" / "cni.log"), stderr=err, context="ADD c1 ns/web")
    line = log.info(NOW, "limited\nsomething   here")
    assert line == "2023-11-14T22:13:20.123Z natra INFO ADD c1 ns/web: limited something here"
    assert err.getvalue() == line + "\n"
    assert (tmp_path / "a" / "cni.log").read_text() == line + "\n"


def test_rotation_bounds_the_size(tmp_path):
    path = tmp_path / "cni.log"
    log = Log(path=str(path), max_bytes=1000, stderr=io.StringIO())
    for i in range(200):
        log.warn(NOW + i, f"event {i}")
    assert os.path.getsize(path) <= 1000
    assert os.path.getsize(str(path) + ".1") <= 1000
    assert "event 199" in path.read_text()
    assert not os.path.exists(str(path) + ".2")


def test_unwritable_places_are_swallowed(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = Log(path=str(blocker / "sub" / "cni.log"), stderr=None)
    assert "ERROR" in log.error(NOW, "still fine")


def test_no_file_when_path_is_empty(tmp_path):
    log = Log(path="", stderr=io.StringIO())
    log.info(NOW, "x")
    assert log.lines and not list(tmp_path.iterdir())
