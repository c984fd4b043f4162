"""Tests of natra/kernel/pins.py: container ID -> pin directory names, and the directory itself.

No root needed: naming is pure, and making/clearing/listing directories is
checked on a temporary (non-bpffs) directory. The pure half of the meta record
(natra/kernel/meta.py encode/decode) is checked here too; pinning it needs bpffs and
is covered in tests/kernel/test_datapath.py.
"""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natra.kernel import layout as L
from natra.kernel import meta, pins

container_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,80}\Z")


@given(container_ids)
def test_name_round_trips_and_has_no_dot(cid):
    name = pins.encode_name(cid)
    assert "." not in name and "/" not in name
    assert len(name) <= pins.NAME_MAX
    assert pins.decode_name(name) == cid


@given(container_ids, container_ids)
def test_distinct_ids_get_distinct_names(a, b):
    if a != b:
        assert pins.encode_name(a) != pins.encode_name(b)


@pytest.mark.parametrize("cid, name", [
    ("0123abcdef", "0123abcdef"),
    ("pod.1", "pod_d1"),
    ("a_b", "a__b"),
    ("a_.b", "a___db"),
    ("x-_-.", "x-__-_d"),
])
def test_encoding_examples(cid, name):
    assert pins.encode_name(cid) == name
    assert pins.decode_name(name) == cid


@pytest.mark.parametrize("bad", ["", ".hidden", "-x", "a/b", "a b", "caf\u00e9", "a\nb", "..", None, 7])
def test_invalid_container_ids_are_refused(bad):
    with pytest.raises(pins.PinError):
        pins.encode_name(bad)


@pytest.mark.parametrize("foreign", ["_x", "a_", "a.b", "_hdeadbeef", "-lead"])
def test_names_not_made_by_us_decode_to_none(foreign):
    assert pins.decode_name(foreign) is None


def test_overlong_id_is_hashed_deterministically():
    cid = "a" * 200 + "." * 30  # encodes to 260 characters
    name = pins.encode_name(cid)
    assert name.startswith(pins.HASHED_PREFIX) and "." not in name
    assert name == pins.encode_name(cid)
    assert pins.encode_name(cid + "b") != name
    assert pins.decode_name(name) is None  # the meta record holds the ID then


def test_pin_paths(tmp_path):
    pd = pins.pin_dir("c.1", str(tmp_path))
    assert pd.path == str(tmp_path / "c_d1")
    assert pd.link(L.DIR_TO_POD) == str(tmp_path / "c_d1" / "link_to_pod")
    assert pd.link(L.DIR_FROM_POD) == str(tmp_path / "c_d1" / "link_from_pod")
    assert pd.prog(L.DIR_FROM_POD) == str(tmp_path / "c_d1" / "prog_from_pod")
    assert pd.map("natra_config") == str(tmp_path / "c_d1" / "natra_config")
    assert pd.meta == str(tmp_path / "c_d1" / "meta")


def test_root_from_argument_env_or_default(monkeypatch):
    monkeypatch.delenv(pins.ROOT_ENV, raising=False)
    assert pins.resolve_root() == pins.DEFAULT_ROOT
    monkeypatch.setenv(pins.ROOT_ENV, "/elsewhere")
    assert pins.resolve_root() == "/elsewhere"
    assert pins.resolve_root("/given") == "/given"


def test_make_clear_and_list(tmp_path):
    root = str(tmp_path / "natra")
    assert pins.list_containers(root) == []
    made = [pins.pin_dir(cid, root) for cid in ("b.2", "a_1", "c")]
    for pd in made:
        pins.make(pd)
        with open(os.path.join(pd.path, "natra_state"), "w"):
            pass
    assert stat.S_IMODE(os.stat(root).st_mode) == pins.DIR_MODE
    assert all(stat.S_IMODE(os.stat(pd.path).st_mode) == pins.DIR_MODE for pd in made)
    os.mkdir(os.path.join(root, "not.ours"))  # a name we never make is ignored
    assert pins.list_containers(root) == ["a_1", "b.2", "c"]
    pins.clear(made[0])
    pins.clear(made[0])  # clearing twice is fine
    assert not os.path.exists(made[0].path)
    assert pins.list_containers(root) == ["a_1", "c"]


def test_meta_record_round_trips():
    record = {"container_id": "c.1", "ifindex": 7, "mode": "tcx", "limits": {"to_pod": [10_000_000, 5]}}
    raw = meta.encode(record).ljust(meta.META_VALUE_SIZE, b"\0")
    assert meta.decode(raw) == record


def test_meta_refuses_a_record_that_does_not_fit():
    with pytest.raises(meta.MetaError):
        meta.encode({"x": "y" * meta.META_VALUE_SIZE})


@pytest.mark.parametrize("raw", [b"", b"\0" * 16, b"not json\0", b"[1, 2]\0"])
def test_unreadable_meta_decodes_to_none(raw):
    assert meta.decode(raw) is None
