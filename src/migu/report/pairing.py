"""Which runs are compared with which, and what a set of paired differences says.

A pair is two runs that differ in the method alone: the same model, tasks, seed and every other
setting (protocol, data, batch, precision, ...); the learning rate may differ (each method at its
chosen rate), but a table row never pools pairs of different rates or protocols (``row_key``).
Two pairs are not independent when their runs share training: runs with one seed and the same
first task train identically until their orders part (orders 1 and 2 of the standard benchmark
share dbpedia and amazon), so ``units`` averages such pairs into one before an interval is drawn.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from .. import metrics
from .runs import config_value, flat_config, order_of

FREE_KEYS = ("method", "methods.", "name", "output_dir", "progress", "save_model", "train.lr", "data.root")
"""Config keys that may differ between the two runs of a pair: the method, its settings, where
the run was written and its data read from (the data itself must match), and the rate (shown
beside every difference; see ``rates``)."""


def _setting(run: dict[str, Any]) -> dict[str, str]:
    """The run's settings as dotted keys, an empty section as ``"{}"`` (so that ``format: {}``
    and ``format: {layout: pack}`` differ), without ``FREE_KEYS``."""
    return {k: v for k, v in flat_config(run, empty_sections=True).items() if not k.startswith(FREE_KEYS)}


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs agree on every setting but the method's (``FREE_KEYS``). A key only one of
    them records counts against them when the other records that path in another shape (a value
    against a section: ``evaluators: null`` against ``evaluators.lm_eval.limit``), and not
    otherwise (a setting added to migu later, absent from older files)."""
    sa, sb = _setting(a), _setting(b)
    if any(sa[k] != sb[k] for k in sa.keys() & sb.keys()):
        return False
    one_sided = sa.keys() ^ sb.keys()
    every = sa.keys() | sb.keys()
    return not any(o != k and (k.startswith(o + ".") or o.startswith(k + ".")) for o in one_sided for k in every)


def pm(values: Sequence[float | None]) -> str:
    """Mean ± std, "–" if any value is missing (a metric the schedule leaves out)."""
    if not values or any(v is None for v in values):
        return "–"
    mean, std = metrics.mean_std(values)  # type: ignore[arg-type]
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def without(method: str, component: str) -> str | None:
    """The method spec with ``component`` removed (``lora+replay+migu`` -> ``lora+replay``), or None
    if the spec lacks it or is nothing else."""
    parts = method.split("+")
    if component not in parts or len(parts) == 1:
        return None
    return "+".join(p for p in parts if p != component)


def _baseline_for(run: dict[str, Any], bases: list[dict[str, Any]], by: tuple[str, ...]) -> dict[str, Any] | None:
    """The baseline run to pair with: the one with the same ``by`` values, else the only one."""
    same = [b for b in bases if all(config_value(b, k) == config_value(run, k) for k in by)]
    if len(same) == 1:
        return same[0]
    return bases[0] if len(bases) == 1 else None


def partners(
    runs: list[dict[str, Any]], partner_of: Callable[[str], str | None], by: tuple[str, ...]
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(run, its partner run or None) for every run whose method ``partner_of`` maps to a partner
    method: the partner's run on the same model, tasks and seed, in the same setting
    (``same_setting``), and with the same ``by`` values if several remain."""
    index: dict[tuple[str, str, str, tuple[str, ...], Any], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:  # (and the tasks run: one order with a task dropped is another)
        index[(r["model"], r["method"], order_of(r), tuple(r["sequence"]), r["seed"])].append(r)
    for run in runs:
        method = partner_of(run["method"])
        if method is not None:
            key = (run["model"], method, order_of(run), tuple(run["sequence"]), run["seed"])
            bases = [b for b in index.get(key, []) if same_setting(b, run)]
            yield run, _baseline_for(run, bases, by)


Pair = tuple[dict[str, Any], dict[str, Any]]


def rates(pairs: Sequence[Pair]) -> str:
    """The learning rates of paired runs: one value, "without / with" when the two sides differ,
    and each side's values joined by "," when its runs differ among themselves."""

    def side(runs: list[dict[str, Any]]) -> str:
        found = sorted({config_value(run, "train.lr") for run in runs})
        return ",".join("–" if r == "-" else r for r in found)  # ("-": no rate recorded)

    without_, with_ = side([b for b, _ in pairs]), side([w for _, w in pairs])
    return without_ if without_ == with_ else f"{without_} / {with_}"


def row_key(pair: Pair) -> tuple[str, str]:
    """What a table row holds one value of: the pair's protocol and rates. Pairs of different
    protocols or rates are never pooled into one row."""
    protocol = config_value(pair[1], "protocol")
    return ("" if protocol in ("-", "None") else protocol), rates([pair])


def unit_of(pair: Pair) -> tuple[Any, ...]:
    """Pairs with one unit train identically at first: the same model, seed and first task."""
    run = pair[1]
    return run["model"], run["seed"], run["sequence"][0]


def units(pairs: Sequence[Pair], values: Sequence[float]) -> list[float]:
    """``values`` (one per pair) averaged within each unit (``unit_of``), in first-seen order."""
    grouped: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for pair, value in zip(pairs, values, strict=True):
        grouped[unit_of(pair)].append(value)
    return [sum(v) / len(v) for v in grouped.values()]


@dataclass(frozen=True)
class Interval:
    """Paired differences: ``n`` pairs in ``k`` independent units, their mean and std (over the
    pairs), and a t-based interval over the units (``None`` with fewer than two units)."""

    n: int
    k: int
    mean: float
    std: float
    low: float | None
    high: float | None

    def text(self) -> str:
        if self.low is None or self.high is None:
            return "–"
        return f"[{self.low:+.2f}, {self.high:+.2f}]"

    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """The two-sided t interval of the mean of ``values`` (Student's t, n - 1 degrees of freedom)."""
    n = len(values)
    if n < 2:
        return None, None
    mean, std = metrics.mean_std(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def interval(pairs: Sequence[Pair], values: Sequence[float], level: float = 0.95) -> Interval:
    """``Interval`` of paired differences: mean and std over the pairs, the interval over the
    independent units (the pairs themselves when no two share training)."""
    mean, std = metrics.mean_std(values)
    unit_means = units(pairs, values)
    low, high = t_interval(unit_means, level)
    return Interval(len(values), len(unit_means), mean, std, low, high)


def shared_starts(pairs: Sequence[Pair]) -> list[str]:
    """One line per unit holding several orders: which orders share their first tasks there
    (e.g. "order1, order2 (seed 0: dbpedia > amazon)")."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for pair in pairs:
        grouped[unit_of(pair)].append(pair[1])
    lines = set()
    for (_, seed, _), runs in grouped.items():
        orders = sorted({order_of(r) for r in runs})
        if len(orders) > 1:
            sequences = [r["sequence"] for r in runs]
            common = 0
            while all(len(s) > common and s[common] == sequences[0][common] for s in sequences):
                common += 1
            lines.add(f"{', '.join(orders)} (seed {seed}: {' > '.join(sequences[0][:common])})")
    return sorted(lines)
