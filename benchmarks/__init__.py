"""The benchmark suite: `benchmarks/run [--quick] [--output FILE]` (see docs/benchmarks.md).

Not part of the test suite: tests/benchmarks only checks that a quick run writes every key.
"""
