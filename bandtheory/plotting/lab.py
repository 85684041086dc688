"""Figures of the entropy-collapse lab (matplotlib): curves over steps and radius sweeps.

Both functions take the tables of :mod:`bandtheory.simulate` (compute first, then
draw), return a ``Figure`` and never save or show it. Colours and line styles come from
:mod:`bandtheory.plotting.style` (Band schemes take their divergence's colour).
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from .style import TEXT_WIDTH, color_for, linestyle_for, mpl_style

__all__ = ["PANELS", "lab_curves", "lab_sweep"]

#: Default panels of :func:`lab_curves`: metric column and axis title.
PANELS: tuple[tuple[str, str], ...] = (
    ("entropy", "entropy (nats / token)"),
    ("p_best", "P(best token / trajectory)"),
    ("reward", "expected reward"),
    ("clip_upper_pos", "clip fraction, upper (A > 0)"),
    ("clip_lower_neg", "clip fraction, lower (A < 0)"),
    ("n99", "tokens holding 99% of mass"),
)


def _style_key(scheme: str) -> str:
    """Colour key of a scheme key: ``band_kl:delta=0.1`` -> ``kl``, ``clip:eps=0.3`` -> ``clip``."""
    name = scheme.split(":", 1)[0]
    return name[len("band_"):] if name.startswith("band_") else name


def lab_curves(agg: pd.DataFrame, *, panels: Sequence[tuple[str, str]] = PANELS,
               title: str | None = None, ncols: int = 3) -> Any:
    """One panel per metric, a line per scheme (mean over seeds) with its band.

    The band is the one :func:`bandtheory.simulate.aggregate` computed: a percentile
    bootstrap over seeds, which stays inside the seeds' values and so inside each metric's
    range; with few seeds it is rough (it under-covers), a picture of the seeds' spread.

    Args:
        agg: Output of :func:`bandtheory.simulate.aggregate`.
        panels: ``(metric, axis title)`` pairs.
        title: Optional figure title.
        ncols: Panels per row.

    Returns:
        A matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    panels = [p for p in panels if p[0] in set(agg["metric"])]
    if not panels:
        raise ValueError("none of the requested metrics is in the table")
    nrows = -(-len(panels) // ncols)
    with mpl_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(TEXT_WIDTH, 2.1 * nrows + 0.5),
                                 squeeze=False, sharex=True)
        schemes = list(dict.fromkeys(agg["scheme"]))
        for ax, (metric, name) in zip(axes.flat, panels):
            sub = agg[agg["metric"] == metric]
            for scheme in schemes:
                d = sub[sub["scheme"] == scheme].sort_values("step").dropna(subset=["mean"])
                if d.empty:
                    continue
                key = _style_key(scheme)
                color = color_for(key)
                ax.plot(d["step"], d["mean"], color=color, linestyle=linestyle_for(key),
                        label=d["label"].iloc[0])
                ax.fill_between(d["step"], d["lo"], d["hi"], color=color, alpha=0.15,
                                linewidth=0)
            ax.set_title(name)
            if metric == "p_best":
                ax.set_ylim(0.0, 1.02)
            elif metric in ("entropy", "clip_upper_pos", "clip_lower_neg", "kl"):
                ax.set_ylim(bottom=0)
        for ax in axes[-1]:
            ax.set_xlabel("step")
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))
        if title:
            fig.suptitle(title)
    return fig


def lab_sweep(table: pd.DataFrame, *, title: str | None = None) -> Any:
    """Final entropy and final reward (mean and band over seeds) against the radius.

    Args:
        table: Output of :func:`bandtheory.simulate.sweep`.
        title: Optional figure title.

    Returns:
        A matplotlib ``Figure`` with two panels (log-scaled radius).
    """
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("the sweep table is empty")
    param = str(table["param"].iloc[0])
    key = _style_key(str(table["scheme"].iloc[0]))
    color = color_for(key)
    x = table["value"]
    with mpl_style():
        fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 2.6))
        for ax, col, name in ((axes[0], "final_entropy", "final entropy (nats / token)"),
                              (axes[1], "final_reward", "final expected reward")):
            ax.plot(x, table[col], marker="o", color=color, linestyle=linestyle_for(key))
            ax.fill_between(x, table[f"{col}_lo"], table[f"{col}_hi"], color=color,
                            alpha=0.15, linewidth=0)
            ax.set_xscale("log")
            ax.set_xlabel("δ (trust-region radius)" if param == "delta" else "ε_high")
            ax.set_title(name)
        if title:
            fig.suptitle(title)
    return fig
