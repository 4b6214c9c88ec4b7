"""The methods rows read from each trial's recipe (provenance.json) and reproduction certificate (reproduced.json)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from harness import store

NOT_RECORDED = "not recorded (stored before trials recorded their recipes)"


def _distinct(recipes: list[dict[str, Any]], text: Callable[[dict[str, Any]], str]) -> str:
    """One value when every trial agrees, else each value with how many trials had it."""
    counts = Counter(text(p) for p in recipes)
    if len(counts) == 1:
        return next(iter(counts))
    return "varied: " + "; ".join(f"{value} ({n} trials)" for value, n in counts.most_common())


def _software(p: dict[str, Any]) -> str:
    s = p.get("software") or {}
    names = ("python", "torch", "torchvision", "timm", "numpy")
    return ", ".join(f"{name} {s.get(name) or 'not installed'}" for name in names)


def _hardware(p: dict[str, Any]) -> str:
    h = p.get("hardware") or {}
    if h.get("device") == "cuda":
        return f"{h.get('gpu')} (CUDA {h.get('cuda')}, cuDNN {h.get('cudnn')}); {p.get('precision')}"
    return f"CPU {h.get('cpu')}, {h.get('threads')} threads; {p.get('precision')}"


def _determinism(p: dict[str, Any]) -> str:
    d = p.get("determinism") or {}
    if not d.get("requested"):
        return "off (deterministic: false): repeatable within noise, not bit for bit"
    ops = d.get("nondeterministic_ops") or []
    without = f"; without a deterministic kernel: {', '.join(ops)}" if ops else ""
    return f"on: deterministic algorithms, cuDNN deterministic, benchmark off, cuBLAS {d.get('cublas_workspace_config')}{without}"


def _data(p: dict[str, Any]) -> str:
    d = p.get("data") or {}
    files = ", ".join(f"{name} {digest[:12]}" for name, digest in sorted((d.get("files_sha256") or {}).items()))
    return f"{d.get('n_images')} images; SHA-256 {files}"


def _code(p: dict[str, Any]) -> str:
    c = p.get("code") or {}
    dirty = " with uncommitted changes" if c.get("git_dirty") else ""
    return f"harness {c.get('harness_version')}, commit {str(c.get('git_commit'))[:12]}{dirty}"


def recipe_rows(results: list[store.Result]) -> list[tuple[str, str]]:
    """Code, software, hardware and precision, determinism and the data's fingerprint, as the trials recorded them;
    each trial's provenance.json also holds its decoded caches' and starting weights' digests and its seeds."""
    recipes = [p for r in results if (p := r.files.read_provenance())]
    if not recipes:
        return [("Recipe", NOT_RECORDED)]
    partial = f" (recorded by {len(recipes)} of {len(results)} trials)" if len(recipes) < len(results) else ""
    return [
        ("Code" + partial, _distinct(recipes, _code)),
        ("Software", _distinct(recipes, _software)),
        ("Hardware and precision", _distinct(recipes, _hardware)),
        ("Determinism", _distinct(recipes, _determinism)),
        ("Data fingerprint", _distinct(recipes, _data)),
    ]


def reproduced_rows(results: list[store.Result]) -> list[tuple[str, str]]:
    """Which trials `harness reproduce` re-trained from their recipes, and each one's verdict."""
    certified = [(r, c) for r in results if (c := r.files.read_reproduced())]
    if not certified:
        return [("Reproduced", "no trial re-trained yet (harness reproduce RESULTS/GRID --sample K)")]
    counts = Counter(c["verdict"] for _, c in certified)
    each = "; ".join(
        f"{r.trial.get('label', r.key)} ({r.key}): reproduced: {c['verdict']}"
        + (f" ({', '.join(c.get('reasons') or [])})" if c["verdict"] == "different" else "")
        for r, c in certified
    )
    summary = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
    tolerance = next((c.get("tolerance") for _, c in certified if c.get("tolerance")), "")
    return [
        (
            "Reproduced",
            f"{len(certified)} of {len(results)} trials re-trained from their recipes: {summary} "
            f"(within noise: every AUROC inside {tolerance}). {each}",
        )
    ]
