"""Made-up pinned records for the observe, status and exporter tests (no kernel).

Owns: RawPod / RawDirection records built the way natra.node.observe's edge
reads them (fields of natra_config and natra_state, NCOUNTERS counters, flow
dicts) and flow keys from addresses: `config`, `raw_dir`, `key`, `flow`, `pod`.
Must not know: what the tests assert.
"""

from __future__ import annotations

import dataclasses

from natra.reference import key as refkey

from natra.kernel import flowkey
from natra.kernel import layout as L
from natra.kernel.params import params_for, to_config
from natra.node import observe as O


def config(rate_bps: int | None = 10_000_000) -> dict:
    values = to_config(params_for(rate_bps) if rate_bps else None)
    return dataclasses.asdict(values)


def raw_dir(rate_bps: int | None = 10_000_000, counters=None, state=None) -> O.RawDirection:
    return O.RawDirection(config=config(rate_bps), state=state or {},
                          counters=list(counters or [0] * L.NCOUNTERS))


def key(src: str, dst: str, sport: int, dport: int, proto: int = 6) -> bytes:
    import ipaddress

    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    pack = (lambda x: O.V4_MAPPED + x.packed if x.version == 4 else x.packed)
    ethertype = flowkey.ETH_P_IP if a.version == 4 else flowkey.ETH_P_IPV6
    flags = 0 if a.version == 4 else L.KEY_IPV6
    return refkey.make_key(pack(a), pack(b), sport, dport, ethertype, proto, flags)


def flow(counted_epoch: int, estimate: int = 0, passed: int = 0, dropped: int = 0, last_ns: int = 0) -> dict:
    return {"backlog_nbit": 0, "last_ns": last_ns, "counted_epoch": counted_epoch, "estimate_bytes": estimate,
            "passed_bytes": passed, "dropped_bytes": dropped, "marked_packets": 0}


def pod(directions=None, flows=None, meta=None, cid="c0ffee00112233445566") -> O.RawPod:
    return O.RawPod(container_id=cid, meta=meta if meta is not None else
                    {"pod": "team-a/web-1", "pod_uid": "u-1", "host_ifname": "veth1", "mode": "tcx"},
                    directions=directions or {L.DIR_TO_POD: raw_dir()}, flows=flows or {},
                    flow_table_size=4096, attached=(L.DIR_TO_POD,))
