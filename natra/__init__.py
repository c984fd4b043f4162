"""Natra: a Kubernetes CNI plugin that rate-limits Pods in eBPF, heavy hitters first."""

__version__ = "0.1.0"
