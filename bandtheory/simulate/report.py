"""Tables and words from the lab's runs: confidence bands, summary, verdict.

Everything here is a pure function of the per-step table of :func:`bandtheory.simulate.simulate`
(one row per scheme, seed and step).

Bands over seeds: percentile bootstrap of the mean
---------------------------------------------------
The band of a mean over ``n`` seeds is the percentile bootstrap interval: the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the means of ``n_boot``
resamples (with replacement) of the seeds' values. The resamples are drawn from a
generator with a fixed seed, so the band is deterministic. A resampled mean is a convex
combination of the data, so the band never leaves ``[min, max]`` of the seeds' values and
therefore never leaves a metric's natural range (entropy in ``[0, log K]``, probabilities
and clip fractions in ``[0, 1]``, expected reward within the attainable rewards, ``n99``
in ``[1, K]``, ``kl >= 0``) without the lab having to know that range. The Student-t
interval used before does not have this property: with 5 seeds and a bimodal metric (the
best token found in some seeds and not in others) it gave P(best) bands up to 1.25 and
negative entropies. The bootstrap also assumes no normality of these bounded, skewed
per-seed values.

With few seeds the bands are rough. The percentile bootstrap under-covers for small
``n`` (it behaves like a normal interval with the standard deviation shrunk by
``sqrt((n - 1) / n)``; with 5 seeds its nominal 95% is nearer 85-90%), and with ``n = 2``
it is just ``[min, max]``. Read a band as the spread of the seeds, not as a calibrated
interval; add seeds before concluding.

Paired comparisons and the verdict
----------------------------------
All schemes of a run start from the same initial policy (the environment's Zipf logits;
no seed enters it) and a seed fixes the random-number stream (group samples, reward
noise, minibatch shuffles), so scheme ``a`` and scheme ``b`` under the same seed see the
same first group: comparisons are paired by seed. :func:`compare` counts, per seed,
whether the scheme beat the baseline by at least a stated margin, and a one-sided sign
test over the seeds that differ decides whether a direction is claimed; see
:func:`verdict` for the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .runner import METRICS

__all__ = [
    "aggregate",
    "summarize",
    "verdict",
    "compare",
    "Comparison",
    "sign_test",
    "steps_to_threshold",
    "mean_band",
    "bootstrap_band",
    "N_BOOT",
]

#: Bootstrap resamples of every band.
N_BOOT: int = 2000
#: Seed of the bootstrap's generator (the bands are deterministic).
BOOT_SEED: int = 20240917

# Rows of means are resampled this many at a time (bounds memory to ~16 MB).
_CHUNK = 1024


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) \
            or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n, n_boot)`` weights: column ``b`` holds the resample counts of draw ``b``, over ``n``."""
    rng = np.random.default_rng([seed, n])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return counts.T / n


def bootstrap_band(values: np.ndarray, *, confidence: float = 0.95, n_boot: int = N_BOOT,
                   seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise mean and percentile-bootstrap band over the last axis (NaNs dropped).

    Args:
        values: Array ``(rows, n)``: one row per quantity, one column per seed; NaN marks
            a missing value.
        confidence: Level of the band, in ``(0, 1)``.
        n_boot: Number of resamples, ``>= 1``.
        seed: Seed of the resampling generator. Rows with the same number of finite
            values share the same resamples (common random numbers).

    Returns:
        ``(mean, lo, hi)``, arrays of shape ``(rows,)``; ``lo = hi = mean`` for a row with
        one finite value, NaN for a row with none. Always
        ``min <= lo <= mean <= hi <= max`` of the row's finite values.
    """
    confidence = _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"values must be 2-d (rows, seeds), got shape {x.shape}")
    finite = ~np.isnan(x)
    count = finite.sum(axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, np.where(finite, x, 0.0).sum(axis=1) / np.maximum(count, 1),
                        np.nan)
    lo = mean.copy()
    hi = mean.copy()
    q = np.array([(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    full = count == x.shape[1]
    groups: list[tuple[np.ndarray, np.ndarray, int]] = []
    if x.shape[1] > 1 and full.any():
        rows = np.flatnonzero(full)
        groups.append((rows, x[rows], x.shape[1]))
    for r in np.flatnonzero(~full & (count > 1)):  # rare: a seed missing a value
        groups.append((np.array([r]), x[r][finite[r]][None, :], int(count[r])))
    for rows, data, n in groups:
        w = _resample_weights(n, n_boot, seed)
        for start in range(0, len(rows), _CHUNK):
            means = data[start:start + _CHUNK] @ w
            band = np.quantile(means, q, axis=1)
            chunk = data[start:start + _CHUNK]
            # Float rounding in the weighted sums can step a hair outside the data; a
            # strongly skewed row can put a quantile past the mean: widen to include it.
            sl = rows[start:start + _CHUNK]
            lo[sl] = np.minimum(np.maximum(band[0], chunk.min(axis=1)), mean[sl])
            hi[sl] = np.maximum(np.minimum(band[1], chunk.max(axis=1)), mean[sl])
    return mean, lo, hi


def mean_band(values: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of one set of per-seed values: percentile bootstrap, NaNs dropped."""
    m, lo, hi = bootstrap_band(np.asarray(values, dtype=np.float64).reshape(1, -1),
                               confidence=confidence)
    return float(m[0]), float(lo[0]), float(hi[0])


def aggregate(table: pd.DataFrame, *, metrics: Sequence[str] = METRICS,
              confidence: float = 0.95) -> pd.DataFrame:
    """Tidy mean and percentile-bootstrap band over seeds (see the module docstring).

    Args:
        table: Per-step table (columns ``scheme, label, step, seed`` and the metrics).
        metrics: Metric columns to aggregate.
        confidence: Level of the band, in ``(0, 1)``.

    Returns:
        Long table with columns ``scheme, label, step, metric, mean, lo, hi, n``
        (``n`` the seeds with a value; ``lo = hi = mean`` when ``n = 1``).
    """
    confidence = _check_confidence(confidence)
    long = table.melt(id_vars=["scheme", "label", "step", "seed"], value_vars=list(metrics),
                      var_name="metric", value_name="value")
    keys = ["scheme", "label", "metric", "step"]
    wide = long.set_index(keys + ["seed"])["value"].unstack("seed")
    order = long[keys].drop_duplicates()
    wide = wide.reindex(pd.MultiIndex.from_frame(order))
    mean, lo, hi = bootstrap_band(wide.to_numpy(), confidence=confidence)
    out = order.reset_index(drop=True)
    out["mean"] = mean
    out["lo"] = lo
    out["hi"] = hi
    out["n"] = wide.notna().sum(axis=1).to_numpy()
    return out[["scheme", "label", "step", "metric", "mean", "lo", "hi", "n"]]


def steps_to_threshold(table: pd.DataFrame, *, column: str = "p_best",
                       threshold: float = 0.5) -> pd.DataFrame:
    """First step at which ``column >= threshold``, per scheme and seed (NaN if never)."""
    rows = []
    for (scheme, seed), grp in table.groupby(["scheme", "seed"], sort=False):
        grp = grp.sort_values("step")
        hit = grp.loc[grp[column] >= threshold, "step"]
        rows.append({"scheme": scheme, "seed": seed,
                     "steps": float(hit.iloc[0]) if len(hit) else math.nan})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """One row per scheme: final entropy, run-mean entropy, steps to p_best >= 0.5, final reward.

    Columns: ``scheme, label, final_entropy (+_lo, _hi), mean_entropy (+_lo, _hi),
    median_steps_to_half`` (median over seeds, a seed that never got there counting as
    later than any that did; NaN when half the seeds or more never did),
    ``reached`` (seeds that got there), ``seeds``, ``final_reward (+_lo, _hi)``,
    ``final_p_best``. The bands are percentile bootstraps over seeds (module docstring).
    """
    last = table["step"].max()
    reach = steps_to_threshold(table)
    rows = []
    for scheme, grp in table.groupby("scheme", sort=False):
        fin = grp[grp["step"] == last].sort_values("seed")
        run_mean = grp[grp["step"] > 0].groupby("seed")["entropy"].mean()
        if run_mean.empty:  # zero steps: only the initial policy
            run_mean = fin.set_index("seed")["entropy"]
        r = reach[reach["scheme"] == scheme]["steps"].to_numpy()
        censored = np.where(np.isnan(r), np.inf, r)
        med = float(np.median(censored)) if censored.size else math.nan
        row = {"scheme": scheme, "label": grp["label"].iloc[0]}
        for name, values in (("final_entropy", fin["entropy"]), ("mean_entropy", run_mean),
                             ("final_reward", fin["reward"])):
            m, lo, hi = mean_band(values.to_numpy(), confidence=confidence)
            row.update({name: m, f"{name}_lo": lo, f"{name}_hi": hi})
        row["final_p_best"] = float(fin["p_best"].mean())
        row["median_steps_to_half"] = med if math.isfinite(med) else math.nan
        row["reached"] = int(np.sum(~np.isnan(r)))
        row["seeds"] = int(fin["seed"].nunique())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Paired comparisons
# --------------------------------------------------------------------------------------


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign-test p-value ``P(Binom(wins + losses, 1/2) >= wins)`` (1 if no pairs).

    Ties are left out before the test, as usual for the sign test.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2.0 ** n


def _min_seeds(level: float) -> int:
    """Fewest differing seeds for which ``n`` out of ``n`` reaches ``p <= level``."""
    return max(1, math.ceil(math.log2(1.0 / level) - 1e-12))


#: Quantities :func:`compare` knows, with their default margins (absolute, relative).
QUANTITIES: dict[str, tuple[float, float]] = {
    "reach": (2.0, 0.1),          # steps until P(best) >= 0.5: max(2 steps, 10%)
    "final_entropy": (0.01, 0.1),  # final entropy: max(0.01 nats, 10%)
}


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of a scheme with a baseline over seeds (see :func:`compare`).

    ``wins``/``losses`` count the seeds where the scheme was better/worse by at least the
    margin ``max(abs_margin, rel_margin * larger value)``; ``ties`` the others.
    ``p_win = sign_test(wins, losses)``, ``p_loss = sign_test(losses, wins)``.
    """

    quantity: str
    scheme: str
    baseline: str
    seeds: tuple[int, ...]
    scheme_values: tuple[float, ...]
    baseline_values: tuple[float, ...]
    wins: int
    losses: int
    ties: int
    p_win: float
    p_loss: float
    level: float
    abs_margin: float
    rel_margin: float

    @property
    def outcome(self) -> str:
        """``"better"``, ``"worse"`` or ``"no clear difference"``."""
        if self.p_win <= self.level:
            return "better"
        if self.p_loss <= self.level:
            return "worse"
        return "no clear difference"


def compare(table: pd.DataFrame, scheme: str, baseline: str, *, quantity: str,
            level: float = 0.05, abs_margin: float | None = None,
            rel_margin: float | None = None) -> Comparison:
    """Paired comparison of ``scheme`` with ``baseline`` over the seeds they share.

    Quantities (per seed):

    - ``"reach"``: the first step with ``p_best >= 0.5``, a seed that never got there
      counting as step ``T + 1`` (a lower bound on when it would have: the rule is
      conservative for a scheme that got there late and a baseline that never did);
      fewer steps is better.
    - ``"final_entropy"``: the entropy after the last step; higher is better.

    A seed is a win when the scheme is better by at least
    ``max(abs_margin, rel_margin * max(|a|, |b|))`` (defaults in :data:`QUANTITIES`:
    2 steps or 10%; 0.01 nats or 10%), a loss when worse by that much, a tie otherwise.
    The direction is claimed when the one-sided sign test over wins and losses gives
    ``p <= level``.

    Raises:
        ValueError: Unknown quantity or scheme, or a level outside ``(0, 1)``.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; choose one of {', '.join(QUANTITIES)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    d_abs, d_rel = QUANTITIES[quantity]
    abs_margin = d_abs if abs_margin is None else float(abs_margin)
    rel_margin = d_rel if rel_margin is None else float(rel_margin)
    known = set(table["scheme"])
    for s in (scheme, baseline):
        if s not in known:
            raise ValueError(f"scheme {s!r} is not in the table; it has "
                             f"{', '.join(sorted(known))}")
    last = int(table["step"].max())
    if quantity == "reach":
        reach = steps_to_threshold(table).fillna({"steps": float(last + 1)})
        per = {s: reach[reach["scheme"] == s].set_index("seed")["steps"]
               for s in (scheme, baseline)}
        sign = -1.0  # fewer steps is better
    else:
        fin = table[table["step"] == last]
        per = {s: fin[fin["scheme"] == s].set_index("seed")["entropy"] for s in (scheme, baseline)}
        sign = 1.0
    both = pd.concat([per[scheme].rename("a"), per[baseline].rename("b")], axis=1).dropna()
    both = both.sort_index()
    a, b = both["a"].to_numpy(), both["b"].to_numpy()
    margin = np.maximum(abs_margin, rel_margin * np.maximum(np.abs(a), np.abs(b)))
    gain = sign * (a - b)
    wins = int(np.sum(gain >= margin))
    losses = int(np.sum(-gain >= margin))
    return Comparison(
        quantity=quantity, scheme=scheme, baseline=baseline,
        seeds=tuple(int(s) for s in both.index), scheme_values=tuple(map(float, a)),
        baseline_values=tuple(map(float, b)), wins=wins, losses=losses,
        ties=len(a) - wins - losses, p_win=sign_test(wins, losses),
        p_loss=sign_test(losses, wins), level=float(level),
        abs_margin=abs_margin, rel_margin=rel_margin,
    )


def _reach_words(c: Comparison, thing: str, last: int) -> str:
    n = len(c.seeds)

    def got(values):
        hit = sorted(v for v in values if v <= last)
        if not hit:
            return f"0/{n} seeds"
        if len(hit) > 6:
            where = f"median step {np.median(hit):g} among them"
        else:
            where = ("step " if len(hit) == 1 else "steps ") + ", ".join(f"{v:g}" for v in hit)
        return f"{len(hit)}/{n} seeds ({where})"
    head = {"better": "yes, sooner", "worse": "no, LATER",
            "no clear difference": "no clear difference"}[c.outcome]
    return (f"Found the best {thing} sooner: {head}. P(best) passed 0.5 in "
            f"{got(c.scheme_values)} under the Band and {got(c.baseline_values)} under "
            f"clipping; the Band was clearly sooner in {c.wins} seed(s), clearly later in "
            f"{c.losses}, within the margin (or neither got there) in {c.ties}; sign test "
            f"p(sooner) = {c.p_win:.3g}, p(later) = {c.p_loss:.3g}.")


def _entropy_words(c: Comparison) -> str:
    head = {"better": "yes, higher", "worse": "no, LOWER",
            "no clear difference": "no clear difference"}[c.outcome]
    return (f"Kept higher entropy: {head}. Final entropy {np.mean(c.scheme_values):.3f} nats "
            f"under the Band vs {np.mean(c.baseline_values):.3f} under clipping (means over "
            f"seeds); clearly higher in {c.wins} seed(s), clearly lower in {c.losses}, within "
            f"the margin in {c.ties}; sign test p(higher) = {c.p_win:.3g}, "
            f"p(lower) = {c.p_loss:.3g}.")


def verdict(table: pd.DataFrame, *, baseline: str = "clip", level: float = 0.05) -> str:
    """Words, generated from the numbers, on whether each Band beat canonical clipping.

    For each Band scheme (key ``band_*``) against ``baseline``, paired by seed
    (:func:`compare`):

    - *found the best token / trajectory sooner*: per seed, the first step with
      ``P(best) >= 0.5`` (never = step ``T + 1``) is earlier by at least
      ``max(2 steps, 10% of the larger)``;
    - *kept higher entropy*: per seed, the final entropy is higher by at least
      ``max(0.01 nats, 10% of the larger)``.

    A direction is claimed only when a one-sided sign test over the seeds that differ by
    the margin gives ``p <= level`` (0.05: with 5 seeds, all 5 must differ the same way);
    otherwise the text says "no clear difference" with the counts. The claim "held" when
    both directions were claimed for the Band, "held only in part" when one was, and
    "did NOT hold" otherwise; the text states the rule it used.
    """
    schemes = list(dict.fromkeys(table["scheme"]))
    bands = [s for s in schemes if s.startswith("band_")]
    if baseline not in schemes:
        return (f"No comparison: the baseline {baseline!r} (canonical clipping) was not run; "
                "include it to test the paper's claim.")
    if not bands:
        return "No comparison: no Band scheme was run."
    last = int(table["step"].max())
    if last == 0:
        return "No comparison: zero steps were run."
    labels = dict(zip(table["scheme"], table["label"]))
    thing = "token" if table["env"].iloc[0] == "bandit" else "trajectory"
    nseeds = int(table["seed"].nunique())
    lines = []
    for b in bands:
        reach = compare(table, b, baseline, quantity="reach", level=level)
        ent = compare(table, b, baseline, quantity="final_entropy", level=level)
        kept, found = ent.outcome == "better", reach.outcome == "better"
        if kept and found:
            head = "the claim held in this run"
        elif kept or found:
            head = "the claim held only in part in this run"
        else:
            head = "the claim did NOT hold in this run"
        lines.append(f"{labels[b]} vs {labels[baseline]}: {head}.\n"
                     f"  {_reach_words(reach, thing, last)}\n  {_entropy_words(ent)}")
    need = _min_seeds(level)
    rule = (f"Rule: seeds paired (same initial policy and random numbers); a seed counts when "
            f"the first step with P(best) >= 0.5 differs by at least max(2 steps, 10%) (never "
            f"= step {last + 1}) or the final entropy by at least max(0.01 nats, 10%); a "
            f"direction is claimed when a one-sided sign test over the seeds that count gives "
            f"p <= {level:g}, which needs at least {need} such seeds all one way")
    if nseeds < need:
        rule += f" (this run has {nseeds} seed(s), so it can claim nothing: add seeds)"
    lines.append(rule + ".")
    return "\n".join(lines)
