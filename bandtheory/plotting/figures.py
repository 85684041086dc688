"""The paper's figures with matplotlib.

Each function computes its data with :mod:`bandtheory.plotting.data`, draws it in the
style of :mod:`bandtheory.plotting.style` and returns a
:class:`matplotlib.figure.Figure`: nothing is saved or shown (the caller decides, e.g.
``bandtheory figures``). Figures are built with ``matplotlib.figure.Figure`` directly
(no pyplot), so no global figure registry is touched. Every figure keeps its data: the
frame(s) it drew are attached as ``fig.bandtheory_data`` (a dict of DataFrames), so
tests and notebooks can check what was drawn against the library.

The figures (THEORY.md section 5 and the issue "paper figures"):

- :func:`ratio_bounds` (paper Fig. 1a) and :func:`probability_variation` (Fig. 1b);
- :func:`clipping_region` (paper Fig. 2);
- :func:`all_divergences`, :func:`saturation`, :func:`tail_gain`, :func:`small_delta`.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from . import FIGURES
from . import data as _data
from .style import (
    COLUMN_WIDTH,
    REGION_COLORS,
    TEXT_WIDTH,
    color_for,
    linestyle_for,
    mpl_style,
)

# One figure function per name of bandtheory.plotting.FIGURES, named after it.
__all__ = [*FIGURES, "FIGURE_FUNCTIONS", "freeze_layout"]

_P_LABEL = r"old probability $\pi_{old}(a\,|\,s)$"


def _figure(width: float, height: float, **kwargs: Any):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def freeze_layout(fig) -> None:
    """Run the figure's layout engine once and keep the result (no further layout passes).

    Every format saved afterwards (and every order of formats) then sees the same axes
    positions to the last bit. The draw is a real one: a plain ``Figure`` has a base
    canvas whose ``draw()`` does nothing, so the layout engine would never run.
    """
    fig.draw_without_rendering()
    fig.set_layout_engine("none")


def _draw_bounds(ax, frame: pd.DataFrame, lower: str, upper: str) -> None:
    """Draw the lower and upper column of every curve (one legend entry per curve)."""
    for curve, part in frame.groupby("curve", sort=False):
        key = part["key"].iloc[0]
        style = dict(color=color_for(key), linestyle=linestyle_for(key))
        if key == "simplex":
            style.update(linewidth=1.0)
        ax.plot(part["p"], part[upper], label=part["label"].iloc[0], **style)
        ax.plot(part["p"], part[lower], **style)


def _attach(fig, **frames: Any):
    fig.bandtheory_data = dict(frames)
    return fig


# --------------------------------------------------------------------------------------
# Fig. 1: ratio bounds and probability variation
# --------------------------------------------------------------------------------------


def _fig1_frame(delta: float, eps_low: float, eps_high: float, n: int) -> pd.DataFrame:
    schemes = _data.paper_schemes(delta=delta, eps_low=eps_low, eps_high=eps_high)
    p = _data.p_grid(n=n, p_min=1e-3, p_max=1.0 - 1e-3)
    return _data.bound_curves(schemes, p, simplex=True)


def _fig1_axes(frame: pd.DataFrame, *, height: float, lower: str, upper: str,
               ylim: tuple[float, float], ylabel: str, title: str):
    """Figure and axes of a Fig. 1 panel: both bounds of every curve against ``p``.

    Call inside :func:`mpl_style`; the caller adds the legend.
    """
    fig = _figure(COLUMN_WIDTH, height)
    ax = fig.add_subplot()
    _draw_bounds(ax, frame, lower, upper)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(*ylim)
    ax.set_xlabel(_P_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


def ratio_bounds(*, delta: float = 0.1, eps_low: float = 0.2, eps_high: float = 0.28, n: int = 400):
    """Paper Fig. 1a: ratio bounds against the old probability.

    Band KL, TV and Pearson chi2 at ``delta``, DCPO (``eps_low``/``eps_high``), DAPO's
    fixed bounds ``[1 - eps_low, 1 + eps_high]`` and the simplex limits ``0`` and
    ``1/p``.

    Args:
        delta: Trust-region radius of the Bands (paper: 0.1).
        eps_low: DCPO and DAPO ``eps_low`` (paper: 0.2).
        eps_high: DCPO and DAPO ``eps_high`` (paper: 0.28).
        n: Number of grid points in ``p``.

    Returns:
        The figure; ``fig.bandtheory_data["bounds"]`` is the frame drawn.
    """
    frame = _fig1_frame(delta, eps_low, eps_high, n)
    with mpl_style():
        fig, ax = _fig1_axes(frame, height=2.6, lower="lower", upper="upper", ylim=(0.0, 4.0),
                             ylabel=r"ratio bound $\pi / \pi_{old}$",
                             title=f"Ratio bounds (δ = {delta:g})")
        ax.legend(loc="upper right", ncol=1)
    return _attach(fig, bounds=frame)


def probability_variation(
    *, delta: float = 0.1, eps_low: float = 0.2, eps_high: float = 0.28, n: int = 400
):
    """Paper Fig. 1b: the bounds as probability variation ``p (bound - 1)``.

    Same schemes as :func:`ratio_bounds`; the simplex limits become ``1 - p`` (the
    new probability reaches 1) and ``-p`` (it reaches 0).

    Args:
        delta: Trust-region radius of the Bands (paper: 0.1).
        eps_low: DCPO and DAPO ``eps_low`` (paper: 0.2).
        eps_high: DCPO and DAPO ``eps_high`` (paper: 0.28).
        n: Number of grid points in ``p``.

    Returns:
        The figure; ``fig.bandtheory_data["bounds"]`` is the frame drawn.
    """
    frame = _fig1_frame(delta, eps_low, eps_high, n)
    with mpl_style():
        fig, ax = _fig1_axes(frame, height=3.1, lower="lower_var", upper="upper_var",
                             ylim=(-1.0, 1.0), ylabel=r"probability variation $\pi - \pi_{old}$",
                             title=f"Probability variation (δ = {delta:g})")
        ax.axhline(0.0, color="#333333", linewidth=0.5)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2)
    return _attach(fig, bounds=frame)


# --------------------------------------------------------------------------------------
# Fig. 2: clipping region
# --------------------------------------------------------------------------------------


def clipping_region(
    *,
    delta: float = 0.1,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    divergence: str = "kl",
    n: int = 80,
    ratio_max: float = 3.0,
):
    """Paper Fig. 2: where the Band and DAPO allow a move ``pi_old -> pi_new``.

    Left: a 3-D view over the plane ``(pi_old, pi_new)`` with the ratio
    ``pi_new / pi_old`` as height (drawn up to ``ratio_max``), coloured by region;
    right: the same regions seen from above. Regions: both allow, Band allows and DAPO
    clips, DAPO allows and Band clips, both clip.

    Args:
        delta: Radius of the Band (paper: 0.1).
        eps_low: DAPO ``eps_low`` (paper: 0.2).
        eps_high: DAPO ``eps_high`` (paper: 0.28).
        divergence: The Band's divergence (paper: KL).
        n: Grid points per axis of the 3-D surface (the top view uses ``4 n``).
        ratio_max: Height at which the 3-D surface is cut flat (the ratio reaches ``1/p``).

    Returns:
        The figure; ``fig.bandtheory_data["region"]`` is the tidy frame of the top view.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .. import schemes as _schemes

    band = _schemes.band(divergence, delta=delta)
    dapo = _schemes.clip_higher(eps_low=eps_low, eps_high=eps_high)
    surface = _data.region_grid(band, dapo, np.linspace(0.01, 1.0, n), np.linspace(0.0, 1.0, n))
    top = _data.region_grid(band, dapo, np.linspace(0.005, 1.0, 4 * n), np.linspace(0.0, 1.0, 4 * n))
    names = top.labels
    colors = [REGION_COLORS[name] for name in _data.REGIONS]
    edge = "#555555"
    with mpl_style():
        fig = _figure(TEXT_WIDTH, 3.0)
        grid = fig.add_gridspec(1, 2, width_ratios=(1.25, 1.0))
        ax3 = fig.add_subplot(grid[0], projection="3d")
        pp, qq = np.meshgrid(surface.p, surface.q)
        height = np.minimum(surface.ratio, ratio_max)
        facecolors = np.asarray(colors, dtype=object)[surface.region]
        face_rgba = np.array([[_rgba(c) for c in row] for row in facecolors])
        ax3.plot_surface(pp, qq, height, facecolors=face_rgba, shade=False, linewidth=0,
                         antialiased=False, rcount=n, ccount=n, rasterized=True)
        ax3.set_xlabel(r"$\pi_{old}$", labelpad=-4)
        ax3.set_ylabel(r"$\pi_{new}$", labelpad=-4)
        ax3.set_zlabel(r"ratio $\pi_{new}/\pi_{old}$", labelpad=-4)
        ax3.set_zlim(0.0, ratio_max)
        ax3.tick_params(pad=-2)
        ax3.view_init(elev=22, azim=-58)
        ax3.set_box_aspect(None, zoom=0.95)
        ax3.set_title(f"Ratio as height (cut at {ratio_max:g})")

        ax = fig.add_subplot(grid[1])
        cmap = ListedColormap(colors)
        # A categorical image: embedded once in vector output, not 10^5 quadrilaterals.
        ax.imshow(top.region, cmap=cmap, vmin=-0.5, vmax=3.5, origin="lower", aspect="auto",
                  interpolation="nearest", extent=(top.p[0], top.p[-1], top.q[0], top.q[-1]))
        for lo_hi, color, label in (
            (top.band_bounds, color_for(divergence), top.band_label),
            (top.other_bounds, color_for("dapo"), top.other_label),
        ):
            for bound in lo_hi:
                ax.plot(top.p, np.minimum(top.p * bound, 1.0), color=color, linewidth=0.8,
                        linestyle=linestyle_for(divergence if color != color_for("dapo") else "dapo"))
        ax.plot([0, 1], [0, 1], color="#333333", linewidth=0.5, linestyle=(0, (1, 1.5)))
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_aspect("equal")
        ax.grid(False)
        ax.set_xlabel(r"$\pi_{old}$")
        ax.set_ylabel(r"$\pi_{new}$")
        ax.set_title("Regions (top view)")
        handles = [Patch(facecolor=c, edgecolor=edge, linewidth=0.5, label=name)
                   for c, name in zip(colors, names)]
        fig.legend(handles=handles, loc="outside lower center", ncol=4,
                   title=f"{top.band_label} vs {top.other_label}")
    return _attach(fig, region=top.to_frame(), surface=surface.to_frame())


def _rgba(color: str) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return to_rgba(color)


# --------------------------------------------------------------------------------------
# Every divergence
# --------------------------------------------------------------------------------------


def all_divergences(
    *, delta: float = 0.05, eps_low: float = 0.2, eps_high: float = 0.28, n: int = 300,
    p_min: float = 1e-4,
):
    """Every built-in divergence's Band at ``delta``: ratio bounds and probability variation.

    Two panels over a logarithmic ``p`` axis, with DAPO Clip-Higher and the simplex
    limits for contrast. On the right, the probability gain of rare tokens levels off
    at ``1 - r*(delta)`` for divergences with finite ``f'(inf)``, while fixed clipping's
    gain ``eps_high * p`` vanishes.

    Args:
        delta: Trust-region radius (default 0.05, the paper's headline).
        eps_low: Clip-Higher ``eps_low``.
        eps_high: Clip-Higher ``eps_high``.
        n: Grid points in ``p``.
        p_min: Smallest ``p`` drawn.

    Returns:
        The figure; ``fig.bandtheory_data["bounds"]`` is the frame drawn.
    """
    from .. import schemes as _schemes

    schemes = _data.divergence_schemes(delta=delta)
    schemes["dapo"] = _schemes.clip_higher(eps_low=eps_low, eps_high=eps_high)
    p = _data.p_grid(n=n, p_min=p_min, p_max=1.0 - 1e-4, log=True)
    frame = _data.bound_curves(schemes, p, simplex=True)
    with mpl_style():
        fig = _figure(TEXT_WIDTH, 3.0)
        ax_r, ax_v = fig.subplots(1, 2)
        _draw_bounds(ax_r, frame, "lower", "upper")
        _draw_bounds(ax_v, frame, "lower_var", "upper_var")
        for ax in (ax_r, ax_v):
            ax.set_xscale("log")
            ax.set_xlim(p_min, 1.0)
            ax.set_xlabel(_P_LABEL)
        ax_r.set_ylim(0.0, 6.0)
        ax_r.set_ylabel(r"ratio bound $\pi / \pi_{old}$")
        ax_r.set_title(f"Ratio bounds (δ = {delta:g})")
        ax_v.axhline(0.0, color="#333333", linewidth=0.5)
        ax_v.set_ylim(-0.6, 0.6)
        ax_v.set_ylabel(r"probability variation $\pi - \pi_{old}$")
        ax_v.set_title("Probability variation")
        handles, labels = ax_r.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", ncol=1)
    return _attach(fig, bounds=frame)


# --------------------------------------------------------------------------------------
# Saturation, tail gain, small delta
# --------------------------------------------------------------------------------------


def saturation(*, deltas: Any = None):
    """Saturation thresholds in ``p`` against ``delta`` for every divergence that saturates.

    For ``p >= p_upper`` the upper bound is the simplex limit ``1/p`` (the new
    probability may reach 1); for ``p <= p_lower`` the lower bound is ``0``. The
    thresholds are exact roots of ``g_f(p, 1/p) = delta`` and ``g_f(p, 0) = delta``, and
    mirror each other: ``p_lower = 1 - p_upper``. KL, Neyman chi2 and Jeffreys have
    ``f(0) = inf`` and never saturate.

    Args:
        deltas: Radii (default 60 geometric points in ``[1e-3, 1]``).

    Returns:
        The figure; ``fig.bandtheory_data["thresholds"]`` is the frame drawn.
    """
    deltas = np.geomspace(1e-3, 1.0, 60) if deltas is None else np.asarray(deltas, dtype=np.float64)
    frame = _data.saturation_thresholds(deltas=deltas)
    with mpl_style():
        fig = _figure(COLUMN_WIDTH, 3.0)
        ax = fig.add_subplot()
        for name, part in frame.groupby("divergence", sort=False):
            style = dict(color=color_for(name), linestyle=linestyle_for(name))
            ax.plot(part["delta"], part["p_upper"], label=name, **style)
            ax.plot(part["delta"], part["p_lower"], **style)
        ax.set_xscale("log")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlim(float(deltas.min()), float(deltas.max()))
        ax.set_xlabel(r"trust-region radius $\delta$")
        ax.set_ylabel(r"$p_{upper}$ (from 1), $p_{lower}$ (from 0)")
        ax.set_title("upper $= 1/p$ for $p \\geq p_{upper}$; lower $= 0$ for $p \\leq p_{lower}$",
                     fontsize=7.5)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3)
    return _attach(fig, thresholds=frame)


def tail_gain(*, deltas: Any = None, eps_high: float = 0.28, p_small: float = 1e-10):
    """The ``p -> 0`` limit of the probability gain ``p (upper - 1)`` against ``delta``.

    Lines: the limit ``1 - r*(delta)`` per divergence (``0`` where ``f'(inf) = inf``,
    e.g. Pearson chi2, reverse KL, Jeffreys). Markers: the exact gain at ``p_small``
    from :func:`bandtheory.band_bounds` (a check; for ``f'(inf) = inf`` the approach to
    0 is slow). Fixed clipping's gain ``eps_high * p`` tends to 0 for every ``eps_high``.

    Args:
        deltas: Radii (default 40 geometric points in ``[1e-3, 1]``).
        eps_high: Clip-Higher ``eps_high`` (only labels the zero line).
        p_small: The tiny ``p`` of the markers.

    Returns:
        The figure; ``fig.bandtheory_data["gain"]`` is the frame drawn.
    """
    deltas = np.geomspace(1e-3, 1.0, 40) if deltas is None else np.asarray(deltas, dtype=np.float64)
    frame = _data.tail_gain(deltas=deltas, p_small=p_small)
    with mpl_style():
        fig = _figure(COLUMN_WIDTH, 3.0)
        ax = fig.add_subplot()
        for name, part in frame.groupby("divergence", sort=False):
            color = color_for(name)
            ax.plot(part["delta"], part["gain"], color=color, linestyle=linestyle_for(name), label=name)
            ax.plot(part["delta"].iloc[::4], part["gain_at_p_small"].iloc[::4], linestyle="none",
                    marker="o", markersize=2.2, markerfacecolor="none", markeredgewidth=0.6, color=color)
        ax.axhline(0.0, color=color_for("dapo"), linestyle=linestyle_for("dapo"), linewidth=1.2,
                   label=f"fixed clip, ε_high = {eps_high:g}")
        ax.set_xscale("log")
        ax.set_xlabel(r"trust-region radius $\delta$")
        ax.set_ylabel(r"$\lim_{p\to 0}\ p\,(\mathrm{upper} - 1)$")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title("Probability gain of rare tokens")
        ax.text(0.03, 0.97, f"lines: limit p → 0\nmarkers: exact at p = {p_small:g}",
                transform=ax.transAxes, va="top", fontsize=6.5)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.86), ncol=2, fontsize=6)
    return _attach(fig, gain=frame)


def small_delta(*, p: float = 0.1, divergence: str = "kl", deltas: Any = None):
    """Exact Band against the small-delta expansion ``1 +/- sqrt(2 delta (1-p) / (f''(1) p))``.

    Left: the exact bounds of ``divergence`` at ``p`` against ``delta`` with the
    expansion (and its ``O(delta)`` correction when :mod:`bandtheory.symbolic` provides
    it); the expansion leaves the simplex ``[0, 1/p]`` where it fails outright. Right:
    the relative error ``|expansion - exact| / |exact - 1|`` of the upper bound for every
    smooth built-in, growing like ``sqrt(delta)``.

    Args:
        p: Old probability (default 0.1).
        divergence: Divergence of the left panel (default KL).
        deltas: Radii (default 60 geometric points in ``[1e-4, 2]``).

    Returns:
        The figure; ``fig.bandtheory_data["expansion"]`` (left) and ``["errors"]``
        (right) are the frames drawn.
    """
    from .. import divergences as _div

    deltas = np.geomspace(1e-4, 2.0, 60) if deltas is None else np.asarray(deltas, dtype=np.float64)
    left = _data.small_delta(divergence, p=p, deltas=deltas, second_order=True)
    smooth = [n for n in _div.names() if _div.get(n).smooth]
    errors = pd.concat([_data.small_delta(n, p=p, deltas=deltas) for n in smooth], ignore_index=True)
    errors = errors[errors["side"] == "upper"].reset_index(drop=True)
    key = _div.get(divergence).name
    with mpl_style():
        fig = _figure(TEXT_WIDTH, 2.7)
        ax_b, ax_e = fig.subplots(1, 2)
        color = color_for(key)
        for side, part in left.groupby("side", sort=False):
            first = side == "lower"
            ax_b.plot(part["delta"], part["exact"], color=color, label="exact" if first else None)
            ax_b.plot(part["delta"], part["first_order"], color=color_for("expansion"),
                      linestyle=linestyle_for("expansion"), linewidth=1.0,
                      label="first order" if first else None)
            if "second_order" in part:
                ax_b.plot(part["delta"], part["second_order"], color=color_for("expansion"),
                          linestyle=(0, (1, 1)), linewidth=1.0, label="second order" if first else None)
        ax_b.axhline(0.0, color=color_for("simplex"), linestyle=linestyle_for("simplex"), linewidth=1.0,
                     label="simplex limits 0, 1/p")
        ax_b.axhline(1.0 / p, color=color_for("simplex"), linestyle=linestyle_for("simplex"), linewidth=1.0)
        lo = left[left["side"] == "lower"]
        outside = lo["first_order"].to_numpy() < 0
        if outside.any():
            ax_b.axvspan(float(lo["delta"].to_numpy()[outside][0]), float(deltas.max()), color="#DDDDDD",
                         alpha=0.5, linewidth=0, label="expansion leaves the simplex")
        ax_b.set_xscale("log")
        ax_b.set_ylim(-1.0, 1.0 / p + 1.0)
        ax_b.set_xlabel(r"trust-region radius $\delta$")
        ax_b.set_ylabel("ratio bound")
        ax_b.set_title(f"Band {key} at p = {p:g}")
        ax_b.legend(loc="upper left")

        exact_names = []
        for name, part in errors.groupby("divergence", sort=False):
            if float(part["rel_error"].max()) < 1e-9:
                # chi2's g is exactly quadratic in r: the expansion is its closed form.
                exact_names.append(name)
                continue
            ax_e.plot(part["delta"], part["rel_error"], color=color_for(name),
                      linestyle=linestyle_for(name), label=name)
        kl_upper = left[left["side"] == "upper"]
        if "rel_error_2" in kl_upper:
            ax_e.plot(kl_upper["delta"], kl_upper["rel_error_2"], color=color_for(key), linestyle=(0, (1, 1)),
                      linewidth=1.0, label=f"{key}, second order")
        if exact_names:
            ax_e.text(0.98, 0.03, f"exact (error < 1e-9, off scale): {', '.join(exact_names)}",
                      transform=ax_e.transAxes, ha="right", va="bottom", fontsize=6.5)
        ax_e.set_ylim(1e-6, 3.0)
        ax_e.axhline(0.1, color="#333333", linewidth=0.6, linestyle=(0, (1, 1.5)))
        ax_e.text(float(deltas.min()), 0.11, "10 % error", fontsize=6.5, va="bottom")
        ax_e.set_xscale("log")
        ax_e.set_yscale("log")
        ax_e.set_xlabel(r"trust-region radius $\delta$")
        ax_e.set_ylabel(r"$|r_{expansion} - r| \,/\, |r - 1|$ (upper)")
        ax_e.set_title(f"Relative error of the expansion at p = {p:g}")
        ax_e.legend(loc="upper left", ncol=2, bbox_to_anchor=(0.0, 0.93))
    return _attach(fig, expansion=left, errors=errors)


#: Figure name -> function (the order ``bandtheory figures`` renders them in).
FIGURE_FUNCTIONS: Mapping[str, Callable[..., Any]] = types.MappingProxyType({
    "ratio_bounds": ratio_bounds,
    "probability_variation": probability_variation,
    "clipping_region": clipping_region,
    "all_divergences": all_divergences,
    "saturation": saturation,
    "tail_gain": tail_gain,
    "small_delta": small_delta,
})
