"""Supported CNI versions and result conversion per version."""

import copy

import pytest

from natra.cni import versions

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1", "mac": "aa:bb:cc:dd:ee:ff"},
                   {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/run/netns/x"}],
    "ips": [{"interface": 1, "address": "10.0.0.2/24", "gateway": "10.0.0.1"},
            {"interface": 1, "address": "fd00::2/64", "gateway": "fd00::1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.0.0.53"]},
}


def test_supported_list():
    assert versions.SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert versions.version_info()["supportedVersions"] == list(versions.SUPPORTED_VERSIONS)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_old_versions_carry_ip_version(version):
    out = versions.convert_result(PREV, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_new_versions_drop_ip_version(version):
    old = versions.convert_result(PREV, "0.3.1")
    out = versions.convert_result(old, version)
    assert out["cniVersion"] == version
    assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
def test_conversion_keeps_everything_else(version):
    before = copy.deepcopy(PREV)
    out = versions.convert_result(PREV, version)
    assert before == PREV  # input untouched
    for key in ("interfaces", "routes", "dns"):
        assert out[key] == PREV[key]
    strip = [{k: v for k, v in ip.items() if k != "version"} for ip in out["ips"]]
    assert strip == PREV["ips"]


def test_no_result_becomes_bare_result():
    assert versions.convert_result(None, "1.0.0") == {"cniVersion": "1.0.0"}


def test_wrong_ip_version_is_corrected():
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.1.1.1/32"}]}
    assert versions.convert_result(prev, "0.4.0")["ips"][0]["version"] == "4"


def test_version_ordering():
    assert versions.at_least("1.1.0", "1.0.0")
    assert not versions.at_least("0.3.1", "0.4.0")
    assert versions.at_least("0.10.0", "0.4.0")
    with pytest.raises(ValueError):
        versions.parse("1.0")
