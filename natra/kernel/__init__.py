"""Natra's kernel layer: everything that talks bpf(2), netlink and tc.

Owns: the mirror of bpf/natra.h (layout), the per-Pod parameters turned into
`struct natra_config` (params), raw bpf(2) (bpfsys), the libbpf binding and
the object loader (libbpf, loader; the objects themselves are natra/bpf/*.o,
built by `make bpf`), attaching to tcx or clsact (attach; the clsact qdisc and
its bpf filters over rtnetlink in clsact), pins on bpffs (pins, meta), map
bytes (maps), flow keys as text (flowkey), netlink (netlink),
BPF_PROG_TEST_RUN (testrun), and one Pod's datapath put together and taken
apart (datapath).
May import: the standard library and itself. Never natra.cni, natra.node,
natra.lab, the model or the simulations (tests/test_layout_boundaries.py
checks it). No numpy, scapy or pyroute2.
"""
