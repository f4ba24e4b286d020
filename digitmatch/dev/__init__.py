"""Tooling around the service, not part of it: the demo, the benchmarks, the embedded broker
(Tansu) and ``digitmatch serve`` as a child process for them and the tests. Its dependencies come
with the ``demo`` and ``bench`` extras (pyproject.toml); the service image has neither."""
