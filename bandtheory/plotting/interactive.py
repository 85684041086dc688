"""Interactive plotly figures for the app (and notebooks): compute first, then draw.

Every builder takes tidy data, returns a :class:`plotly.graph_objects.Figure` and never
shows or saves it. The data come from :mod:`bandtheory.plotting.data` (the same frames
the matplotlib figures draw), colours and the template from
:mod:`bandtheory.plotting.style`. The few arrangements the app needs on top of
``data`` (unique curve ids for composed heuristics, the table of bounds at a few ``p``,
the surrogate curves) are here, each calling the public bandtheory API.

Views of a ratio bound ``r`` at old probability ``p`` (THEORY.md section 5), i.e. the
columns of a bound frame (:data:`bandtheory.plotting.data.BOUND_COLUMNS`):

- ``"ratio"``: ``lower``/``upper``, simplex limits ``0`` and ``1/p``;
- ``"variation"``: ``lower_var``/``upper_var`` = ``p (r - 1)`` (paper Fig. 1b),
  simplex limits ``-p`` and ``1 - p``;
- ``"new_prob"``: ``lower_new``/``upper_new`` = ``p r``, simplex limits ``0`` and ``1``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import data as _data
from . import style as _style

__all__ = [
    "VIEWS",
    "VIEW_COLUMNS",
    "TABLE_P",
    "scheme_key",
    "curves_frame",
    "bounds_table",
    "bands_figure",
    "surrogate_frame",
    "surrogate_figure",
    "region_heatmap",
    "region_surface",
    "validation_figure",
    "simulation_figure",
]

#: View name -> axis title.
VIEWS: Mapping[str, str] = {
    "ratio": "ratio bound r = π_new / π_old",
    "variation": "probability variation p·(r − 1)",
    "new_prob": "new-probability bound p·r",
}

#: View name -> (lower column, upper column) of a bound frame.
VIEW_COLUMNS: Mapping[str, tuple[str, str]] = {
    "ratio": ("lower", "upper"),
    "variation": ("lower_var", "upper_var"),
    "new_prob": ("lower_new", "upper_new"),
}

#: Old probabilities of the app's table of bounds.
TABLE_P: tuple[float, ...] = (1e-4, 0.01, 0.08, 0.2, 0.5, 0.9, 0.99)


def _layout(fig: go.Figure, **kwargs: Any) -> go.Figure:
    fig.update_layout(template=_style.plotly_template(), **kwargs)
    return fig


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")


def _trusted_figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    """A figure from plain dicts in plotly's normalised form, built without validation.

    Validating every property of a few dozen traces costs tens of milliseconds, which the
    app would pay on each widget change. The dicts passed here are exactly what the
    validators would produce (the app tests compare the two routes), so validation is
    skipped while building and switched back on for any later edit of the figure (the
    switch plotly itself uses for its built-in templates).
    """
    layout = dict(layout, template=_style.plotly_template().to_plotly_json())
    fig = go.Figure(data=data, layout=layout, _validate=False)
    for obj in (fig, fig.layout, *fig.data):
        obj._validate = True
    return fig


# --------------------------------------------------------------------------------------
# Bound curves and the table
# --------------------------------------------------------------------------------------


def scheme_key(scheme: Any) -> str:
    """Style key of a scheme, looking through heuristics (a relaxed Band KL is KL)."""
    while hasattr(scheme, "base"):
        scheme = scheme.base
    return _style.style_key(scheme)


def curves_frame(schemes: Sequence[Any], p: Any) -> pd.DataFrame:
    """Bound frame of several schemes (:func:`bandtheory.plotting.data.bound_curves`).

    Curve ids are the schemes' labels (unique even for composed heuristics) and the
    ``key`` column looks through heuristics, so a relaxed or capped Band keeps its
    divergence's colour.

    Args:
        schemes: Objects with ``.bounds(old_log_prob)`` and ``.label``.
        p: 1-D old probabilities in ``(0, 1]``.

    Returns:
        Columns :data:`bandtheory.plotting.data.BOUND_COLUMNS`.
    """
    mapping: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for scheme in schemes:
        curve = str(scheme.label)
        if curve in mapping:
            continue
        mapping[curve] = scheme
        keys[curve] = scheme_key(scheme)
    if not mapping:
        return pd.DataFrame(columns=list(_data.BOUND_COLUMNS))
    frame = _data.bound_curves(mapping, p)
    frame["key"] = frame["curve"].map(keys)
    return frame


def bounds_table(schemes: Sequence[Any], p: Sequence[float] = TABLE_P, *, view: str = "ratio") -> pd.DataFrame:
    """Bounds of each scheme at a few ``p``: rows ``(curve, side)``, one column per ``p``.

    Without schemes the table has its columns and no rows.
    """
    _check_view(view)
    p = np.asarray(p, dtype=np.float64)
    columns = [f"p={value:g}" for value in p]
    frame = curves_frame(schemes, p)
    if frame.empty:
        return pd.DataFrame(columns=columns, index=pd.MultiIndex.from_tuples([], names=["scheme", "side"]),
                            dtype=np.float64)
    low, high = VIEW_COLUMNS[view]
    # A bound frame holds each curve's rows in the order of p, curves one after another.
    curves = list(dict.fromkeys(frame["curve"]))
    lower = frame[low].to_numpy().reshape(len(curves), p.size)
    upper = frame[high].to_numpy().reshape(len(curves), p.size)
    values = np.stack([lower, upper], axis=1).reshape(2 * len(curves), p.size)
    index = pd.MultiIndex.from_tuples([(c, side) for c in curves for side in ("lower", "upper")],
                                      names=["scheme", "side"])
    return pd.DataFrame(values, index=index, columns=columns)


# --------------------------------------------------------------------------------------
# Bands figure
# --------------------------------------------------------------------------------------


def bands_figure(
    curves: pd.DataFrame,
    *,
    view: str = "ratio",
    log_x: bool = False,
    log_y: bool = False,
    y_range: tuple[float, float] | None = None,
    show_simplex: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Ratio bounds (or a view of them) against old probability, one colour per scheme.

    Args:
        curves: A bound frame (:func:`curves_frame` or
            :func:`bandtheory.plotting.data.bound_curves`).
        view: One of :data:`VIEWS`.
        log_x: Logarithmic ``p`` axis.
        log_y: Logarithmic value axis (ratio and new-probability views only).
        y_range: Initial value range; ``None`` chooses one per view.
        show_simplex: Draw the simplex limits (:func:`bandtheory.plotting.data.simplex_limits`).
        title: Figure title.

    Returns:
        A plotly figure; hover shows ``p`` and the exact bound (10 significant digits).
        Upper bounds are solid, lower bounds dashed.
    """
    _check_view(view)
    low_col, high_col = VIEW_COLUMNS[view]
    traces: list[dict[str, Any]] = []

    def line(x: Any, y: Any, *, name: str, group: str, side: str, color: str, width: float, dash: str,
             hover: str) -> None:
        # Copies: the figure must not share memory with the caller's frame.
        traces.append(dict(
            type="scatter", x=np.array(x, dtype=np.float64), y=np.array(y, dtype=np.float64), mode="lines",
            name=name, legendgroup=group, showlegend=side == "upper",
            line=dict(color=color, width=width, dash=dash),
            hovertemplate=f"{hover} ({side})<br>p=%{{x:.6g}}<br>value=%{{y:.10g}}<extra></extra>",
        ))

    curves = curves[curves["curve"] != "simplex"]
    if show_simplex and not curves.empty:
        limits = _data.simplex_limits(np.unique(curves["p"].to_numpy()))
        color = _style.color_for("simplex")
        for col, side in ((high_col, "upper"), (low_col, "lower")):
            line(limits["p"].to_numpy(), limits[col].to_numpy(), name="simplex limits", group="simplex",
                 side=side, color=color, width=1.5, dash="dot", hover="simplex limit")
    for curve, group in curves.groupby("curve", sort=False):
        color = _style.color_for(str(group["key"].iloc[0]))
        label = str(group["label"].iloc[0])
        p = group["p"].to_numpy()
        for col, side in ((high_col, "upper"), (low_col, "lower")):
            line(p, group[col].to_numpy(), name=label, group=str(curve), side=side, color=color, width=2,
                 dash="solid" if side == "upper" else "dash", hover=f"<b>{label}</b>")
    if y_range is None:
        y_range = {"ratio": (0.0, 3.0), "variation": (-0.6, 0.6), "new_prob": (0.0, 1.05)}[view]
    yaxis: dict[str, Any] = dict(title=dict(text=VIEWS[view]))
    if log_y and view != "variation":
        yaxis["type"] = "log"
    else:
        yaxis["range"] = [float(v) for v in y_range]
    layout: dict[str, Any] = dict(
        xaxis=dict(title=dict(text="old probability p = π_old(a|s)"), type="log" if log_x else "linear",
                   exponentformat="power" if log_x else "B"),
        yaxis=yaxis,
        hovermode="closest",
        height=540,
        margin=dict(l=60, r=20, t=40 if title else 20, b=50),
    )
    if title is not None:
        layout["title"] = dict(text=title)
    return _trusted_figure(traces, layout)


# --------------------------------------------------------------------------------------
# Surrogate objective
# --------------------------------------------------------------------------------------


def surrogate_frame(
    schemes: Sequence[Any],
    *,
    p: float,
    adv: float,
    r: Any,
    dual_clip: float | None = None,
) -> pd.DataFrame:
    """The clipped surrogate and its gradient against the ratio, per scheme.

    .. math::

        L(r) = \\min(r A, \\operatorname{clip}(r, l, u) A),\\qquad
        L_{dual}(r) = \\max(L(r), c A)\\ \\text{for}\\ A < 0

    with ``[l, u]`` the scheme's bounds at ``p``. The gradient ``dL/dr`` is ``A`` where
    the unclipped branch is active and ``0`` where clipping (or the dual clip) bites.

    Args:
        schemes: Clipping schemes.
        p: Old probability of the token, in ``(0, 1]``.
        adv: Advantage ``A``.
        r: Ratios at which to evaluate (1-D, ``>= 0``).
        dual_clip: The dual-clip constant ``c > 1`` (applied for ``A < 0``) or ``None``.

    Returns:
        Columns ``scheme`` (label), ``key`` (style key), ``r``, ``objective``, ``gradient``, ``clipped`` (bool),
        ``lower``, ``upper`` (the scheme's bounds at ``p``).
    """
    r = np.asarray(r, dtype=np.float64)
    rows = []
    for scheme in schemes:
        band = scheme.bounds(math.log(p) if p > 0 else -math.inf)
        lower, upper = float(band.lower), float(band.upper)
        unclipped = r * adv
        clipped = np.clip(r, lower, upper) * adv
        objective = np.minimum(unclipped, clipped)
        # The unclipped branch carries the gradient where it is the minimum (inside the
        # interval both branches coincide and the gradient is A).
        active = unclipped <= clipped
        if dual_clip is not None and adv < 0:
            floor = dual_clip * adv
            dual = objective < floor
            objective = np.where(dual, floor, objective)
            active = active & ~dual
        gradient = np.where(active, float(adv), 0.0)
        rows.append(
            pd.DataFrame(
                {
                    "scheme": str(scheme.label),
                    "key": scheme_key(scheme),
                    "r": r,
                    "objective": objective,
                    "gradient": gradient,
                    "clipped": ~active,
                    "lower": lower,
                    "upper": upper,
                }
            )
        )
    if not rows:
        return pd.DataFrame(columns=["scheme", "key", "r", "objective", "gradient", "clipped", "lower", "upper"])
    return pd.concat(rows, ignore_index=True)


def surrogate_figure(data: pd.DataFrame, *, p: float, adv: float, dual_clip: float | None = None) -> go.Figure:
    """Two stacked panels: the surrogate ``L(r)`` and ``dL/dr``, clipped ranges shaded."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("surrogate objective L(r)", "gradient dL/dr"))
    for scheme, group in data.groupby("scheme", sort=False):
        color = _style.color_for(str(group["key"].iloc[0]))
        r = group["r"].to_numpy()
        clipped = group["clipped"].to_numpy()
        # Shade the ratios where this scheme's gradient vanishes.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], clipped.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            fig.add_vrect(x0=r[start], x1=r[stop - 1], fillcolor=color, opacity=0.07, layer="below",
                          line_width=0, row="all", col=1)
        fig.add_trace(go.Scatter(x=r, y=group["objective"], mode="lines", name=str(scheme),
                                 legendgroup=str(scheme), line=dict(color=color, width=2),
                                 hovertemplate=f"<b>{scheme}</b><br>r=%{{x:.6g}}<br>L=%{{y:.10g}}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=r, y=group["gradient"], mode="lines", name=str(scheme),
                                 legendgroup=str(scheme), showlegend=False, line=dict(color=color, width=2),
                                 line_shape="hv",
                                 hovertemplate=f"<b>{scheme}</b><br>r=%{{x:.6g}}<br>dL/dr=%{{y:.6g}}<extra></extra>"),
                      row=2, col=1)
        lower, upper = float(group["lower"].iloc[0]), float(group["upper"].iloc[0])
        for bound in (lower, upper):
            if math.isfinite(bound) and r.min() <= bound <= r.max():
                fig.add_vline(x=bound, line=dict(color=color, width=1, dash="dot"), row="all", col=1)
    if dual_clip is not None and adv < 0:
        fig.add_hline(y=dual_clip * adv, line=dict(color="#555555", dash="dash"), row=1, col=1,
                      annotation_text=f"dual clip c·A = {dual_clip * adv:g}")
    fig.update_xaxes(title_text="ratio r = π_new / π_old", row=2, col=1)
    return _layout(fig, title=dict(text=f"p = {p:g}, A = {adv:g}", y=0.98), height=640,
                   hovermode="closest", margin=dict(l=60, r=20, t=90, b=50))


# --------------------------------------------------------------------------------------
# Clipping region (paper Fig. 2)
# --------------------------------------------------------------------------------------


def _region_scale() -> tuple[list[list[Any]], list[str]]:
    colors = [_style.REGION_COLORS[name] for name in _data.REGIONS]
    scale = []
    for k, color in enumerate(colors):
        scale += [[k / 4, color], [(k + 1) / 4, color]]
    return scale, colors


def region_heatmap(grid: Any) -> go.Figure:
    """The four regions over (pi_old, pi_new) as a categorical heatmap.

    Args:
        grid: A :class:`bandtheory.plotting.data.RegionGrid`.
    """
    scale, _ = _region_scale()
    names = np.asarray(grid.labels, dtype=object)
    fig = go.Figure(go.Heatmap(
        x=grid.p, y=grid.q, z=grid.region, zmin=-0.5, zmax=3.5, colorscale=scale,
        customdata=np.dstack([grid.ratio, names[grid.region]]),
        colorbar=dict(tickvals=[0, 1, 2, 3], ticktext=list(grid.labels), title="region"),
        hovertemplate="π_old=%{x:.4g}<br>π_new=%{y:.4g}<br>ratio=%{customdata[0]:.6g}"
                      "<br>%{customdata[1]}<extra></extra>",
    ))
    return _layout(fig, xaxis=dict(title="π_old", showgrid=False), yaxis=dict(title="π_new", showgrid=False),
                   height=560, title=f"{grid.band_label} vs {grid.other_label}")


def region_surface(grid: Any, *, z_max: float = 5.0) -> go.Figure:
    """The ratio ``pi_new / pi_old`` as a 3-D surface coloured by region (paper Fig. 2).

    Args:
        grid: A :class:`bandtheory.plotting.data.RegionGrid`.
        z_max: Ratios above this are left out (the surface grows like ``1/pi_old``).
    """
    scale, _ = _region_scale()
    names = np.asarray(grid.labels, dtype=object)
    z = np.where(grid.ratio <= z_max, grid.ratio, np.nan)
    fig = go.Figure(go.Surface(
        x=grid.p, y=grid.q, z=z, surfacecolor=grid.region, cmin=-0.5, cmax=3.5, colorscale=scale,
        customdata=names[grid.region],
        colorbar=dict(tickvals=[0, 1, 2, 3], ticktext=list(grid.labels), title="region"),
        hovertemplate="π_old=%{x:.4g}<br>π_new=%{y:.4g}<br>ratio=%{z:.6g}<br>%{customdata}<extra></extra>",
    ))
    return _layout(
        fig,
        scene=dict(xaxis_title="π_old", yaxis_title="π_new", zaxis_title="ratio",
                   camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9))),
        height=620,
        title=f"{grid.band_label} vs {grid.other_label} (ratio ≤ {z_max:g} drawn)",
    )


# --------------------------------------------------------------------------------------
# Validation and simulation
# --------------------------------------------------------------------------------------


def validation_figure(data: pd.DataFrame, *, x: str, y: str, color: str | None = None,
                      log_y: bool = True, title: str | None = None) -> go.Figure:
    """Disagreement between routes (one marker series per ``color`` group)."""
    fig = go.Figure()
    groups = data.groupby(color, sort=False) if color else [("disagreement", data)]
    for index, (name, group) in enumerate(groups):
        values = np.abs(group[y].to_numpy(dtype=np.float64))
        fig.add_trace(go.Scatter(
            x=group[x], y=np.maximum(values, 1e-18), mode="markers", name=str(name),
            marker=dict(color=_style.PALETTE[index % len(_style.PALETTE)], size=7),
            hovertemplate=f"<b>{name}</b><br>{x}=%{{x:.6g}}<br>{y}=%{{y:.3e}}<extra></extra>",
        ))
    return _layout(fig, title=title, xaxis=dict(title=x, type="log"),
                   yaxis=dict(title=y, type="log" if log_y else "linear"), height=460)


def _lab_style_key(scheme: str) -> str:
    """Style key of a simulation scheme key (``band_kl:delta=0.1`` is KL, ``clip:eps=0.3`` clip)."""
    name = str(scheme).split(":", 1)[0]
    return name[len("band_"):] if name.startswith("band_") else name


def simulation_figure(aggregated: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                      titles: Mapping[str, str] | None = None) -> go.Figure:
    """One panel per metric, a line per scheme (mean over seeds) with its confidence band.

    Args:
        aggregated: Output of :func:`bandtheory.simulate.aggregate` (columns ``scheme,
            label, step, metric, mean, lo, hi``).
        metrics: Metrics to draw, in order (default: every metric present).
        titles: Panel titles by metric.

    Returns:
        A plotly figure with shared step axis.
    """
    from plotly.subplots import make_subplots

    present = list(dict.fromkeys(aggregated["metric"])) if len(aggregated) else []
    metrics = [m for m in (metrics or present) if m in present]
    titles = dict(titles or {})
    rows = max(len(metrics), 1)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[titles.get(m, m) for m in metrics] or ["(no metric)"])
    for scheme, group in aggregated.groupby("scheme", sort=False):
        color = _style.color_for(_lab_style_key(scheme))
        label = str(group["label"].iloc[0])
        for row, metric in enumerate(metrics, start=1):
            part = group[group["metric"] == metric].sort_values("step")
            x = part["step"].to_numpy()
            fig.add_trace(go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([part["hi"].to_numpy(), part["lo"].to_numpy()[::-1]]),
                fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0),
                hoverinfo="skip", showlegend=False, legendgroup=str(scheme),
            ), row=row, col=1)
            fig.add_trace(go.Scatter(
                x=x, y=part["mean"].to_numpy(), mode="lines", name=label, legendgroup=str(scheme),
                showlegend=row == 1, line=dict(color=color, width=2, dash=_style.dash_for(_lab_style_key(scheme))),
                hovertemplate=f"<b>{label}</b><br>step=%{{x}}<br>{metric}=%{{y:.6g}}<extra></extra>",
            ), row=row, col=1)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    return _layout(fig, height=280 * rows + 80, hovermode="closest")
