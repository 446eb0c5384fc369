"""The benchmark, beside the product: `python -m demo bench` runs `bench.run` (see README, Benchmarks).

It measures the hub (the `demo` package) against bare transformers and `transformers serve`; the hub never
imports it except where the command line starts it.
"""
