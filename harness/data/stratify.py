"""Iterative stratification over patients: a share of them holding about that share of the images of every label."""

from __future__ import annotations

import numpy as np


def stratified_patients(counts: np.ndarray, sizes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Choose patients holding about `fraction` of the images with each label's share kept.

    Iterative stratification (Sechidis et al. 2011) over patients, with two sides (chosen and
    not): take the label with the fewest unassigned carriers and place each of its carriers, in
    random order, on the side where it best closes the gap to that side's targets (the squared
    shortfall relative to each target, summed over labels); repeat. Weighing every label
    relative to its target keeps one patient with many follow-ups from swamping a small side.
    counts: (patients, labels) images per patient with each label, the last label being "no
    finding"; sizes: images per patient. Returns a boolean mask over patients.
    """
    if fraction > 0.5:
        # The rest of a stratified draw is stratified too; drawing the smaller side is faster.
        return ~stratified_patients(counts, sizes, 1.0 - fraction, rng)
    counts = np.concatenate([counts, sizes[:, None]], axis=1).astype(np.float64)  # the size is a target too
    total = counts.sum(axis=0)
    share = np.array([fraction, 1.0 - fraction])[:, None]
    target = np.maximum(share * total, 1.0)  # (side, label)
    # Per patient, only its non-zero labels change anything: (label, share of side 0's, side 1's target).
    who, what = np.nonzero(counts)
    filled: list[list[tuple[int, float, float]]] = [[] for _ in range(len(counts))]
    for p, j, a, b in zip(
        who.tolist(),
        what.tolist(),
        (counts[who, what] / target[0, what]).tolist(),
        (counts[who, what] / target[1, what]).tolist(),
    ):
        filled[p].append((j, a, b))
    wanted = [[1.0] * counts.shape[1], [1.0] * counts.shape[1]]  # share of each target still wanted, per side
    side = np.full(len(counts), -1, dtype=np.int8)
    carries = counts[:, :-1] > 0
    while True:
        left = carries[side < 0].sum(axis=0)
        if not left.any():
            break
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(left.dtype).max)))
        for p in rng.permutation(np.flatnonzero((side < 0) & carries[:, label])).tolist():
            change = _side_costs(filled[p], wanted, label)
            s = int(change[1] < change[0]) if change[0] != change[1] else int(rng.integers(2))
            side[p] = s
            for j, *step in filled[p]:
                wanted[s][j] -= step[s]
    return _polish(side == 0, filled, 1.0 - np.array(wanted[0]), rng)


def _side_costs(items: list[tuple[int, float, float]], wanted: list[list[float]], label: int) -> list[float]:
    """How placing one patient on each side changes that side's summed squared gaps. items: the patient's
    (label, share of side 0's target, share of side 1's); wanted: each side's share of each target still
    wanted. The label at hand counts its squared shortfall, every other label only its squared overshoot.
    Plain floats in lists: this runs once per patient (30,805 in NIH), where numpy's per-call cost dominates."""
    change = [0.0, 0.0]
    for j, *step in items:
        for s in (0, 1):
            w = wanted[s][j]
            a = w - step[s]
            if j == label:
                change[s] += a * a - w * w
            else:
                change[s] += (a * a if a < 0 else 0.0) - (w * w if w < 0 else 0.0)
    return change


def _polish(
    chosen: np.ndarray, filled: list, have: np.ndarray, rng: np.random.Generator, tries: int = 64
) -> np.ndarray:
    """Local search after the greedy pass: move single patients in or out of the chosen side while
    that lowers the summed squared relative error. Fixes the overshoot a patient with many
    follow-ups leaves in a small subset. have: filled share of each side-0 target (1 = on target)."""
    error = have - 1.0
    carriers = [[] for _ in range(len(error))]
    for p, items in enumerate(filled):
        for j, *_ in items:
            carriers[j].append(p)
    carriers = [np.array(c, dtype=np.int64) for c in carriers]
    stuck: set[int] = set()
    for _ in range(50 * len(error)):
        order = np.argsort(-np.abs(error))
        label = next((int(j) for j in order if int(j) not in stuck and abs(error[j]) > 1e-9), None)
        if label is None:
            break
        sign = -1.0 if error[label] > 0 else 1.0  # too many: take one out; too few: put one in
        pool = carriers[label][chosen[carriers[label]] == (sign < 0)]
        if len(pool) == 0:
            stuck.add(label)
            continue
        best, best_change = -1, 0.0
        for p in rng.choice(pool, size=min(tries, len(pool)), replace=False).tolist():
            change = 0.0
            for j, a, _ in filled[p]:
                e = error[j]
                change += (e + sign * a) ** 2 - e * e
            if change < best_change:
                best, best_change = p, change
        if best < 0:
            stuck.add(label)
            continue
        chosen[best] = sign > 0
        for j, a, _ in filled[best]:
            error[j] += sign * a
        stuck.clear()
    return chosen
