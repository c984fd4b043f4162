"""Pods without Kubernetes: the demo and the machinery tests and benchmarks use.

Owns: `natra demo` (demo), namespace Pods through a real CNI chain as libcni
runs it (cnichain), a "remote node" network namespace (localnet), a small
traffic server and client (traffic), and Pods as CRI sandboxes in a private
containerd (cri/).
May import: anything in natra (cni, kernel, node) and the standard library.
Nothing in natra.cni, natra.kernel or natra.node may import this package: it
is not part of the node bundle (packaging/natra.spec excludes it whole).
"""
