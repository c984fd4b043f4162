"""Natra's CNI plugin: request -> plan (pure) -> executor (kernel) -> result.

Modules: quantity, errors, versions, request, limits, tuning, plan (the pure
core); executor (effects, through natra.datapath); plugin (the commands);
log. Nothing here imports numpy, scapy or pyroute2.
"""
