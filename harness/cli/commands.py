"""What every subcommand shares: the COMMANDS registry, the exit codes, and the Runtime built from the options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from harness.config import ConfigError, Runtime, default_cache_dir
from harness.registry import Registry

COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("command")
# What a script or CI job branches on: 1 = some trials failed (the summary says which and why), 2 = the input was
# wrong (one line says where), so rerunning the same command cannot help.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def runtime_of(args: argparse.Namespace) -> Runtime:
    """The Runtime (what cannot change a result) from a subcommand's options, each checked before anything runs."""
    gpus = getattr(args, "gpus_per_trial", "auto")
    if gpus != "auto":
        try:
            gpus = float(gpus)
        except ValueError:
            raise ConfigError(f"--gpus-per-trial {gpus!r}: expected a number like 0.25 or 'auto'") from None
        if not 0 <= gpus <= 8:
            raise ConfigError(f"--gpus-per-trial {gpus}: expected a share in [0, 8]")
    cpus = getattr(args, "cpus_per_trial", 1.0)
    if not 1 <= cpus <= 1024:
        raise ConfigError(f"--cpus-per-trial {cpus}: expected a number of cores >= 1")
    device = getattr(args, "device", "auto")
    if device != "auto":
        from harness import hardware  # torch: only commands with --device come here, never `harness report`

        # On a cluster the trials run on its nodes: this machine's lack of a GPU says nothing about theirs.
        on_cluster = hasattr(args, "address") and bool(args.address or _ray_address())
        hardware.check_device(device, here=not on_cluster)
    from harness.cli.transfer import data_roots

    data_root, roots = data_roots(getattr(args, "data_root", None))  # NIH's, and the others' by name
    # Absolute paths: Ray workers run in their own working directories.
    return Runtime(
        data_root=str(Path(data_root).resolve()) if data_root else None,
        data_roots=roots,
        results_dir=str(Path(getattr(args, "results", "results")).resolve()),
        cache_dir=str(Path(getattr(args, "cache_dir", None) or default_cache_dir()).resolve()),
        device=device,
        gpus_per_trial=gpus,
        cpus_per_trial=cpus,
        address=getattr(args, "address", None),
        max_retries=getattr(args, "retries", 2),
        compile=getattr(args, "compile", False),
        workers=getattr(args, "workers", 0),
        reuse_workers=not getattr(args, "fresh_workers", False),
        trackers=_trackers(getattr(args, "tracker", None)),
    )


def _trackers(values: list[str] | None) -> tuple[str, ...]:
    """--tracker names, checked (known, package installed) before anything runs; ray loads only when asked."""
    if not values:
        return ()
    from harness.runner import tracking

    return tracking.parse(values)


def _ray_address() -> str | None:
    """The cluster Ray's address variable names (ray loads only for a run that names a device)."""
    from harness.runner import ray_internals

    return ray_internals.env_address()
