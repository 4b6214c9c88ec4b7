"""Benchmark and ablation harness for chest X-ray classification on NIH ChestX-ray14."""

__version__ = "0.1.0"
