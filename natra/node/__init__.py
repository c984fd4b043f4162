"""What an operator runs on a node, beside the plugin.

Owns: `natra install` / `natra uninstall` (chaining: the pure decision of how
Natra goes into the node's conflist and out again; install: carrying it out,
with bpffs and the binary; install_cli: its subcommands), `natra
status` and `natra top` (status_cli, reading through observe), the Prometheus
exporter with its live page (exporter, web/index.html).
May import: natra.kernel, natra.cni (its constants and parsers), the standard
library, prometheus_client (exporter only). Never natra.lab, the model or the
simulations: the node bundle leaves those out (tests/test_layout_boundaries.py
checks it). No numpy or scapy.
"""
