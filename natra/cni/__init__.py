"""Natra's CNI plugin: request -> plan (pure) -> executor (kernel) -> result.

Modules: quantity, errors, versions, request, limits, tuning, plan (the pure
core); executor (effects, through natra.kernel.datapath); plugin (the commands);
log.
May import: natra.kernel (the pure core for its layout and params, the
executor for the datapath) and the standard library. Never natra.node or
natra.lab (tests/test_layout_boundaries.py checks it). Nothing here imports
numpy, scapy or pyroute2.
"""
