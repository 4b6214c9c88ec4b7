"""The runner: trials through Ray Tune. The only package that imports ray.

grid runs a grid's trials and search the Ray half of a hyperparameter search; attempt runs one trial inside
a worker and decides what its failure means; placement sizes each trial's CPUs and GPU share (and measures
packing); intact checks a done trial's files before a run skips it; stopping turns Ctrl-C and SIGTERM into
a clean stop; cluster starts or joins Ray; tracking gives every Tuner its TensorBoard, MLflow and W&B
callbacks. ray_internals holds what the runner relies on beyond Ray's documented interface, with a contract
test.
"""
