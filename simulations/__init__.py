"""Real and synthetic data sets partitioned into storefronts, the experiment runner,
sweeps, benchmarks, reports, and ``fedshop-sim``."""
