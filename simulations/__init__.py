"""natra.simulations: workloads, metrics and sweeps over the reference model."""
