"""Pods as real CRI sandboxes: a private containerd whose CRI runs ptp -> a limiter.

Owns: running Pods the way a Kubernetes node does, without a kubelet or a
registry, for the demo (`natra demo --runtime containerd`) and the CRI
end-to-end tests (tests/cri, docs/cri.md). Modules:
  - image: the sandbox image built offline (a static `pause` packed as an OCI
    image layout tarball);
  - protocol: a minimal CRI client, protobuf written by hand;
  - node: one private containerd node, its files (config, conflists, CNI bin
    dir, recorded calls) and its process with its teardown;
  - runtime: `DemoRuntime`, start_sandbox/stop_sandbox and a close() that
    removes everything.
Rule: nothing touches containerd's default paths or /etc/cni.
Must not know: the demo's traffic; Natra's internals (the plugin is an
executable like any other). No numpy, scapy or pyroute2.
"""


class RuntimeUnavailable(RuntimeError):
    """containerd cannot run sandboxes here; the message says why."""
