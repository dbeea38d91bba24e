"""Statistics of a reader study, as pure functions of booleans and counts.

- Proportions with 95% **Wilson score** intervals (better coverage than the Wald interval at the
  small counts of a reader study, and never outside [0, 1]).
- **McNemar's test**, exact: the two-sided binomial test of the discordant pairs, b (first party
  right, second wrong) against c (first wrong, second right), under p = 1/2:
  p = min(1, 2 · Σ_{k ≤ min(b, c)} C(b + c, k) / 2^(b + c)); p = 1 when b + c = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

#: The two-sided 97.5% normal quantile (95% intervals).
Z_95 = 1.959963984540054

CI_METHOD = "Wilson score interval, 95%"
MCNEMAR_METHOD = "McNemar's exact test (two-sided binomial on the discordant pairs, p = 1/2)"


@dataclass(frozen=True)
class Estimate:
    """A proportion k/n with its 95% interval (all None when n = 0)."""

    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def wilson_interval(k: int, n: int, *, z: float = Z_95) -> tuple[float, float] | tuple[None, None]:
    """The Wilson score interval of k successes in n trials; (None, None) when n = 0."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None, None
    p = k / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: int, n: int) -> Estimate:
    """k/n with its Wilson 95% interval."""
    low, high = wilson_interval(k, n)
    return Estimate(k=k, n=n, value=k / n if n else None, low=low, high=high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts b and c."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts cannot be negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Confusion:
    tp: int
    fn: int
    tn: int
    fp: int


def confusion(truth: Sequence[bool], called: Sequence[bool]) -> Confusion:
    """Counts of a party's calls (True = metastatic) against the truth (True = positive node)."""
    if len(truth) != len(called):
        raise ValueError("truth and calls differ in length")
    tp = sum(1 for t, c in zip(truth, called, strict=True) if t and c)
    fn = sum(1 for t, c in zip(truth, called, strict=True) if t and not c)
    tn = sum(1 for t, c in zip(truth, called, strict=True) if not t and not c)
    fp = sum(1 for t, c in zip(truth, called, strict=True) if not t and c)
    return Confusion(tp=tp, fn=fn, tn=tn, fp=fp)


def diagnostic_metrics(truth: Sequence[bool], called: Sequence[bool]) -> dict:
    """Confusion counts, sensitivity, specificity and accuracy (each with a Wilson 95% CI)."""
    m = confusion(truth, called)
    return {
        "tp": m.tp,
        "fn": m.fn,
        "tn": m.tn,
        "fp": m.fp,
        "images": len(truth),
        "sensitivity": proportion(m.tp, m.tp + m.fn).as_dict(),
        "specificity": proportion(m.tn, m.tn + m.fp).as_dict(),
        "accuracy": proportion(m.tp + m.tn, len(truth)).as_dict(),
    }


def discordant_pairs(
    truth: Sequence[bool], first: Sequence[bool], second: Sequence[bool]
) -> tuple[int, int]:
    """(b, c): images the first party got right and the second wrong, and the other way round."""
    if not len(truth) == len(first) == len(second):
        raise ValueError("truth and calls differ in length")
    b = c = 0
    for t, x, y in zip(truth, first, second, strict=True):
        right_x, right_y = x == t, y == t
        if right_x and not right_y:
            b += 1
        elif right_y and not right_x:
            c += 1
    return b, c


def mcnemar(truth: Sequence[bool], first: Sequence[bool], second: Sequence[bool]) -> dict:
    """McNemar's exact test of two parties' correctness on the same images: on all images
    (accuracy), and within positive (sensitivity) and negative (specificity) images."""
    result = {}
    for name, keep in (
        ("accuracy", lambda t: True),
        ("sensitivity", lambda t: t),
        ("specificity", lambda t: not t),
    ):
        rows = [(t, x, y) for t, x, y in zip(truth, first, second, strict=True) if keep(t)]
        b, c = discordant_pairs([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        result[name] = {"b": b, "c": c, "p": mcnemar_exact(b, c)}
    return result
