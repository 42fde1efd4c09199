"""Benchmarks that ship with the package: the encoder latency benchmark behind ``aiowhisper-npu bench``
(:mod:`.latency`), and the harness the benchmark scripts of a source checkout (``bench/``) share
(:mod:`.harness`)."""
