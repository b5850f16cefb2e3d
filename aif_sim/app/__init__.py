"""Applications of the engines: one run, sweeps, the output folder, interruption."""
