"""Linear probes on a build's shards: the Ray Train probe (linear.py), the batched (layer x position) sweep
(sweep.py over solvers.py), scores and their significance (metrics.py), baselines and pictures."""
