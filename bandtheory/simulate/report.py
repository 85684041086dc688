"""Tables and words from the lab's runs: confidence bands, summary, verdict.

Everything here is a pure function of the per-step table of :func:`bandtheory.simulate.simulate`
(one row per scheme, seed and step). The confidence band of a mean over ``n`` seeds is
Student's ``mean +/- t_{0.975, n-1} s / sqrt(n)`` (``s`` the sample standard deviation;
the band collapses to the mean when ``n = 1``). Comparisons between two schemes are
paired by seed (all schemes see the same random numbers for the same seed).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .runner import METRICS

__all__ = ["aggregate", "summarize", "verdict", "steps_to_threshold", "mean_band"]


def mean_band(values: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the Student-t confidence interval of the mean (NaNs dropped)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def aggregate(table: pd.DataFrame, *, metrics: Sequence[str] = METRICS,
              confidence: float = 0.95) -> pd.DataFrame:
    """Tidy mean and confidence band over seeds.

    Args:
        table: Per-step table (columns ``scheme, label, step, seed`` and the metrics).
        metrics: Metric columns to aggregate.
        confidence: Level of the band, in ``(0, 1)``.

    Returns:
        Long table with columns ``scheme, label, step, metric, mean, lo, hi, n``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from scipy import stats

    long = table.melt(id_vars=["scheme", "label", "step", "seed"], value_vars=list(metrics),
                      var_name="metric", value_name="value")
    g = long.groupby(["scheme", "label", "metric", "step"], sort=False)["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    q = stats.t.ppf(0.5 + confidence / 2, np.maximum(out["n"] - 1, 1))
    half = np.where(out["n"] > 1, q * out["sd"] / np.sqrt(out["n"]), 0.0)
    out["lo"] = out["mean"] - half
    out["hi"] = out["mean"] + half
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
    ``final_p_best``.
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


def _paired(table: pd.DataFrame, a: str, b: str, column: str) -> np.ndarray:
    """Per-seed run-mean (steps >= 1) of ``column`` for scheme a minus scheme b."""
    def per_seed(s):
        grp = table[(table["scheme"] == s) & (table["step"] > 0)]
        return grp.groupby("seed")[column].mean()

    diff = (per_seed(a) - per_seed(b)).dropna()
    return diff.to_numpy()


def _compare_words(diff: np.ndarray, *, higher: str, lower: str, same: str,
                   confidence: float) -> str:
    m, lo, hi = mean_band(diff, confidence=confidence)
    if diff.size < 2 or math.isnan(m):
        return f"{same} (too few seeds to tell)"
    if lo > 0:
        return f"{higher} (paired difference {m:+.3g}, {confidence:.0%} CI [{lo:+.3g}, {hi:+.3g}])"
    if hi < 0:
        return f"{lower} (paired difference {m:+.3g}, {confidence:.0%} CI [{lo:+.3g}, {hi:+.3g}])"
    return f"{same} (paired difference {m:+.3g}, {confidence:.0%} CI [{lo:+.3g}, {hi:+.3g}] contains 0)"


def verdict(table: pd.DataFrame, *, baseline: str = "clip", confidence: float = 0.95) -> str:
    """Words, generated from the numbers, on whether each Band beat canonical clipping.

    For each Band scheme (key ``band_*``) against ``baseline``: was the entropy averaged
    over the run higher (paired over seeds, Student-t interval of the difference), and
    did the best token / trajectory reach probability 0.5 sooner (per-seed comparison of
    the first step, never counting as later than any step)? The text says plainly when
    the claim did not hold.
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
    reach = steps_to_threshold(table)
    base_r = reach[reach["scheme"] == baseline].set_index("seed")["steps"]
    lines = []
    for b in bands:
        ent = _compare_words(_paired(table, b, baseline, "entropy"), higher="higher",
                             lower="LOWER", same="not distinguishable", confidence=confidence)
        br = reach[reach["scheme"] == b].set_index("seed")["steps"]
        # A seed that never got there counts as later than any step (inf); two infs tie.
        fb = pd.concat([br.rename("band"), base_r.rename("base")], axis=1).fillna(np.inf)
        sooner = int((fb["band"] < fb["base"]).sum())
        later = int((fb["band"] > fb["base"]).sum())
        tie = len(fb) - sooner - later
        n_b, n_c = int(br.notna().sum()), int(base_r.notna().sum())
        nseeds = int(table["seed"].nunique())
        kept = ent.startswith("higher")
        found = sooner > later
        if kept and found:
            head = "the claim held in this run"
        elif kept or found:
            head = "the claim held only in part in this run"
        else:
            head = "the claim did NOT hold in this run"
        lines.append(
            f"{labels[b]} vs {labels[baseline]}: {head}. Entropy averaged over the "
            f"{last} steps was {ent}. The best "
            f"{'token' if table['env'].iloc[0] == 'bandit' else 'trajectory'} passed "
            f"probability 0.5 in {n_b}/{nseeds} seeds under the Band and {n_c}/{nseeds} under "
            f"clipping; the Band got there sooner in {sooner} seed(s), later in {later}, "
            f"tied (incl. neither) in {tie}."
        )
    return "\n".join(lines)
