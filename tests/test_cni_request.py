"""Environment + stdin -> Request: the env table, CNI_ARGS, IDs, names, sizes, versions."""

import json

import pytest

from natra.cni.errors import CniError, Kind
from natra.cni.request import (
    MAX_IFNAME_LEN,
    MAX_STDIN_BYTES,
    REQUIRED_ENV,
    parse_cni_args,
    parse_request,
)

FULL_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u1"}
CONFIG = {"cniVersion": "1.0.0", "name": "net", "type": "natra"}


def stdin(config=CONFIG):
    return json.dumps(config).encode()


def env(command, **changes):
    out = {**FULL_ENV, "CNI_COMMAND": command, **changes}
    return {k: v for k, v in out.items() if v is not None}


def code_of(excinfo):
    return excinfo.value.code


@pytest.mark.parametrize("command", sorted(REQUIRED_ENV))
def test_full_env_is_accepted(command):
    config = {**CONFIG, "cniVersion": "1.1.0"}
    request = parse_request(env(command), stdin(config))
    assert request.command == command


@pytest.mark.parametrize("command, variable", [(c, v) for c, vs in REQUIRED_ENV.items() for v in vs])
def test_each_required_variable(command, variable):
    with pytest.raises(CniError) as excinfo:
        parse_request(env(command, **{variable: None}), stdin({**CONFIG, "cniVersion": "1.1.0"}))
    assert code_of(excinfo) == Kind.INVALID_ENVIRONMENT.value
    assert variable in excinfo.value.msg


def test_del_needs_no_netns():
    request = parse_request(env("DEL", CNI_NETNS=None), stdin())
    assert request.netns == ""


def test_missing_and_unknown_command():
    for command in (None, "RESTART", "add"):
        with pytest.raises(CniError) as excinfo:
            parse_request(env("ADD", CNI_COMMAND=command), stdin())
        assert code_of(excinfo) == 4


def test_cni_args_any_order():
    a, _ = parse_cni_args("K8S_POD_NAME=web;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns")
    b, _ = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web")
    assert a == b == {"K8S_POD_NAME": "web", "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns"}


def test_cni_args_value_may_hold_equals_and_bad_pairs_are_warnings():
    args, warnings = parse_cni_args("A=b=c;;junk;=x")
    assert args == {"A": "b=c"}
    assert len(warnings) == 2


def test_pod_name_from_args():
    assert parse_request(env("ADD"), stdin()).pod == "ns/web"


@pytest.mark.parametrize("cid", ["a", "0", "abc-DEF_1.2", "f" * 64])
def test_valid_container_ids(cid):
    assert parse_request(env("ADD", CNI_CONTAINERID=cid), stdin()).container_id == cid


@pytest.mark.parametrize("cid, code", [("-abc", 4), (".a", 4), ("a/b", 4), ("a b", 4), ("a;b", 4),
                                       ("ä", 4)])
def test_invalid_container_ids(cid, code):
    with pytest.raises(CniError) as excinfo:
        parse_request(env("ADD", CNI_CONTAINERID=cid), stdin())
    assert code_of(excinfo) == code
    assert "containerID" in excinfo.value.msg


@pytest.mark.parametrize("ifname", ["", ".", "..", "a/b", "a:b", "a b", "x" * (MAX_IFNAME_LEN + 1)])
def test_invalid_ifnames(ifname):
    changes = {"CNI_IFNAME": ifname}
    with pytest.raises(CniError) as excinfo:
        parse_request(env("CHECK", **changes), stdin())
    assert code_of(excinfo) == 4


def test_longest_ifname_is_fine():
    assert parse_request(env("ADD", CNI_IFNAME="x" * MAX_IFNAME_LEN), stdin()).ifname == "x" * 15


@pytest.mark.parametrize("data", [b"{", b"[]", b"null", b"\xff\xfe", b"", b'"x"'])
def test_undecodable_stdin(data):
    with pytest.raises(CniError) as excinfo:
        parse_request(env("ADD"), data)
    assert code_of(excinfo) == Kind.DECODE_FAILURE.value


def test_oversized_stdin_is_a_clean_error():
    big = stdin({**CONFIG, "pad": "x" * MAX_STDIN_BYTES})
    with pytest.raises(CniError) as excinfo:
        parse_request(env("ADD"), big)
    assert code_of(excinfo) == Kind.DECODE_FAILURE.value
    assert str(MAX_STDIN_BYTES) in excinfo.value.details


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "x"])
def test_unsupported_versions(version):
    with pytest.raises(CniError) as excinfo:
        parse_request(env("ADD"), stdin({**CONFIG, "cniVersion": version}))
    assert code_of(excinfo) == Kind.INCOMPATIBLE_VERSION.value
    assert "1.1.0" in excinfo.value.details


def test_missing_version_is_the_oldest_and_refused():
    with pytest.raises(CniError) as excinfo:
        parse_request(env("ADD"), stdin({"name": "n", "type": "natra"}))
    assert code_of(excinfo) == 1 and "0.1.0" in excinfo.value.details


@pytest.mark.parametrize("command, version", [("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "0.4.0")])
def test_commands_newer_than_the_config(command, version):
    with pytest.raises(CniError) as excinfo:
        parse_request(env(command), stdin({**CONFIG, "cniVersion": version}))
    assert code_of(excinfo) == 1 and command in excinfo.value.msg


@pytest.mark.parametrize("data", [b"", b"garbage", b'{"cniVersion": "9.9.9"}'])
def test_version_answers_anything(data):
    request = parse_request({"CNI_COMMAND": "VERSION"}, data)
    assert request.command == "VERSION" and request.cni_version == "1.1.0"


def test_version_echoes_a_supported_version():
    assert parse_request({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}').cni_version == "0.4.0"


def test_prev_result_must_be_an_object():
    with pytest.raises(CniError) as excinfo:
        parse_request(env("ADD"), stdin({**CONFIG, "prevResult": [1]}))
    assert code_of(excinfo) == 6
