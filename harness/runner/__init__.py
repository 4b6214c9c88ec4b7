"""The runner: trials through Ray Tune. The only package that imports ray.

grid runs a grid's trials, search the Ray half of a hyperparameter search, placement sizes each trial's CPUs
and GPU share (and measures packing), attempt runs one trial inside a worker and decides what its failure
means, cluster starts or joins Ray; ray_internals holds what the runner relies on beyond Ray's documented
interface, with a contract test.
"""
