"""Ray: the embedded local cluster, Ray Train fine-tuning (and later Tune, jobs)."""
