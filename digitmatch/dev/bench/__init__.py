"""``digitmatch bench``: the model alone, the naive consumer, and the pipeline under load, side by side
in one run on one machine (see docs/benchmarks.md)."""
