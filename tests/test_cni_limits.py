"""Where a Pod's limits come from: runtimeConfig (any key case), static keys, annotations."""

import json

import pytest

from natra.cni.errors import CniError, Kind
from natra.cni.limits import POD_ANNOTATIONS_CAPABILITY, extract_limits, lookup
from natra.kernel import layout as L

IN, OUT = L.DIR_TO_POD, L.DIR_FROM_POD
MAXU32 = 2**32 - 1


def rc(**runtime):
    return {"cniVersion": "1.0.0", "runtimeConfig": runtime}


def annotated(annotations, **runtime):
    return rc(**{POD_ANNOTATIONS_CAPABILITY: annotations}, **runtime)


def test_containerd_pascal_case():
    limits = extract_limits(rc(bandwidth={"IngressRate": 10_000_000, "IngressBurst": MAXU32,
                                          "EgressRate": 5_000_000, "EgressBurst": MAXU32}))
    assert limits.directions[IN].rate_bps == 10_000_000
    assert limits.directions[IN].burst_bits == MAXU32
    assert limits.directions[OUT].rate_bps == 5_000_000
    assert limits.directions[IN].source == "runtimeConfig.bandwidth"


def test_crio_camel_case_and_bandwidth_key_spelling():
    crio_burst = 4 * 1024**3 - 1
    for key in ("bandwidth", "bandWidth", "BANDWIDTH"):
        limits = extract_limits(rc(**{key: {"ingressRate": 1_000_000, "ingressBurst": crio_burst}}))
        assert set(limits.directions) == {IN}
        assert limits.directions[IN].burst_bits == crio_burst


def test_exact_key_wins_over_folded():
    assert lookup({"ingressrate": 1, "ingressRate": 2}, "ingressRate") == 2


def test_no_limits():
    assert not extract_limits({"cniVersion": "1.0.0"})
    assert not extract_limits(rc(bandwidth={}))
    assert not extract_limits(rc(bandwidth={"IngressRate": 0, "IngressBurst": 0}))


@pytest.mark.parametrize("entry, message", [
    ({"ingressRate": 1000}, "if rate is set, burst must also be set"),
    ({"egressBurst": 1000}, "if burst is set, rate must also be set"),
    ({"ingressRate": 1000, "ingressBurst": 8 * MAXU32}, "burst cannot be more than 4GB"),
    ({"ingressRate": -5, "ingressBurst": 100}, "rate and burst must be a positive integer"),
    ({"ingressRate": "10M", "ingressBurst": 100}, "rate and burst must be a positive integer"),
    ({"ingressRate": 1.5, "ingressBurst": 100}, "rate and burst must be a positive integer"),
])
def test_upstream_messages_for_bad_entries(entry, message):
    for config in (rc(bandwidth=entry), {"cniVersion": "1.0.0", **entry}):
        with pytest.raises(CniError) as excinfo:
            extract_limits(config)
        assert excinfo.value.code == Kind.INVALID_CONFIG.value
        assert excinfo.value.msg == message


def test_static_keys_win_over_runtime_config():
    config = {"cniVersion": "1.0.0", "egressRate": 2_000_000, "egressBurst": 4_000_000,
              "runtimeConfig": {"bandwidth": {"IngressRate": 9_000_000, "IngressBurst": MAXU32}}}
    limits = extract_limits(config)
    assert set(limits.directions) == {OUT}  # the whole static entry applies, as upstream
    assert limits.directions[OUT].source == "config"


def test_static_keys_case_insensitive():
    limits = extract_limits({"cniVersion": "1.0.0", "IngressRate": 1_000_000, "IngressBurst": 10})
    assert limits.directions[IN].burst_bits == 10


def test_annotation_plain_quantity_when_runtime_sends_no_bandwidth():
    limits = extract_limits(annotated({"kubernetes.io/egress-bandwidth": "10Mi"}))
    assert limits.directions[OUT].rate_bps == 10_485_760
    assert limits.directions[OUT].burst_bits is None
    assert limits.directions[OUT].source == "kubernetes.io/egress-bandwidth"


def test_runtime_config_wins_over_annotation_for_its_direction():
    config = annotated({"kubernetes.io/ingress-bandwidth": "1M", "kubernetes.io/egress-bandwidth": "2M"},
                       bandwidth={"ingressRate": 5_000_000, "ingressBurst": 100_000})
    limits = extract_limits(config)
    assert limits.directions[IN].rate_bps == 5_000_000
    assert limits.directions[OUT].rate_bps == 2_000_000


def test_extended_json_form():
    value = json.dumps({"rate": "10M", "burst": "20M",
                        "cms": {"width": 2048, "depth": 3, "heavyHitterThreshold": 100_000}})
    limits = extract_limits(annotated({"kubernetes.io/ingress-bandwidth": value}))
    limit = limits.directions[IN]
    assert (limit.rate_bps, limit.burst_bits) == (10_000_000, 20_000_000)
    assert dict(limit.overrides) == {"width": 2048, "depth": 3, "threshold_bytes": 100_000}


@pytest.mark.parametrize("value", [
    "10K", "999", "2P", "ten", "", "{", '{"burst": "1M"}', '{"rate": "10M", "cms": {"rows": 3}}',
    '{"rate": "10M", "cms": {"width": -1}}', '{"rate": "10M", "extra": 1}', '{"rate": "10M", "burst": "0"}',
    '{"rate": "10M", "cms": []}',
])
def test_invalid_annotation_is_a_note_not_an_error(value):
    secret = value
    limits = extract_limits(annotated({"kubernetes.io/ingress-bandwidth": value}))
    assert not limits
    assert len(limits.notes) == 1 and "kubernetes.io/ingress-bandwidth" in limits.notes[0]
    if len(secret) > 3:
        assert secret not in limits.notes[0]  # annotation values are never logged


def test_other_annotations_are_ignored():
    assert not extract_limits(annotated({"example.com/x": "10M"}))
