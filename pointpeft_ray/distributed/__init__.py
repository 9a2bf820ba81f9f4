"""Ray: the embedded local cluster, Ray Train runs (fine-tuning, pre-training), Tune searches
and parallel multi-task fine-tunes."""
