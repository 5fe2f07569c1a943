"""Helpers for tests and benchmarks only (tiny models built offline, whole-model references); not part of alpaca_lib."""
