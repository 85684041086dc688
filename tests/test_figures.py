"""Figures: style, data builders, matplotlib figures and ``bandtheory figures``.

Truth comes from outside the plotting layer: closed forms (TV, Pearson chi2, KL's
``r* = exp(-delta)``), the defining equation of a saturation threshold, the mirror
identity, and :func:`bandtheory.band_bounds` evaluated independently at the plotted x.
"""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from bandtheory import band_bounds, divergences, schemes
from bandtheory.cli import main
from bandtheory.plotting import FIGURES, data, figures, style


# --------------------------------------------------------------------------------------
# style
# --------------------------------------------------------------------------------------


def test_every_builtin_has_its_own_fixed_colour():
    colors = [style.color_for(n) for n in divergences.names()]
    assert len(set(colors)) == len(colors)
    assert style.color_for("kl") == style.OKABE_ITO["blue"]
    assert style.color_for(schemes.band("kl", delta=0.3)) == style.color_for("kl")
    assert style.color_for(divergences.get("tv")) == style.color_for("tv")
    assert style.color_for(schemes.clip_higher()) == style.color_for("clip_higher")


def test_unknown_names_get_a_stable_palette_colour():
    first = style.color_for("alpha(2/3)")
    assert first in style.PALETTE
    assert style.color_for("alpha(2/3)") == first
    with pytest.raises(TypeError, match="expected a name"):
        style.color_for(3.0)


def test_save_metadata_and_template():
    assert style.save_metadata("PDF")["CreationDate"] is None
    assert style.save_metadata("svg")["Date"] is None
    with pytest.raises(ValueError, match="choose one of pdf, png, svg"):
        style.save_metadata("jpg")
    template = style.plotly_template()
    assert list(template.layout.colorway) == list(style.PALETTE)
    assert style.FONT_FAMILY in template.layout.font.family
    assert style.dash_for("kl") == "solid" and style.dash_for("dapo") == "longdash"


def test_mpl_style_is_scoped():
    before = dict(matplotlib.rcParams)
    with style.mpl_style():
        assert matplotlib.rcParams["svg.hashsalt"] == "bandtheory"
        assert matplotlib.rcParams["font.sans-serif"][0] == style.FONT_FAMILY
    assert matplotlib.rcParams["svg.hashsalt"] == before["svg.hashsalt"]


# --------------------------------------------------------------------------------------
# data builders
# --------------------------------------------------------------------------------------


def test_bound_curves_match_the_library_and_closed_forms():
    p = data.p_grid(n=37, p_min=1e-3, p_max=0.999)
    frame = data.bound_curves(data.paper_schemes(delta=0.1), p, simplex=True)
    assert list(frame.columns) == list(data.BOUND_COLUMNS)
    assert list(frame["curve"].unique()) == ["band_kl", "band_tv", "band_chi2", "dcpo", "dapo", "simplex"]

    kl = frame[frame["curve"] == "band_kl"]
    ref = band_bounds(np.log(p), "kl", delta=0.1)
    np.testing.assert_allclose(kl["upper"], ref.upper, rtol=1e-14)
    np.testing.assert_allclose(kl["lower_var"], p * (ref.lower - 1.0), rtol=1e-14, atol=1e-16)

    tv = frame[frame["curve"] == "band_tv"]  # r = 1 +/- delta/p, clamped to [0, 1/p]
    np.testing.assert_allclose(tv["upper"], np.minimum(1 + 0.1 / p, 1 / p), rtol=1e-12)
    np.testing.assert_allclose(tv["lower"], np.maximum(1 - 0.1 / p, 0.0), atol=1e-12)

    chi2 = frame[frame["curve"] == "band_chi2"]  # 1 + sqrt(delta (1-p)/p), capped at 1/p
    np.testing.assert_allclose(chi2["upper"], np.minimum(1 + np.sqrt(0.1 * (1 - p) / p), 1 / p), rtol=1e-12)

    dcpo = frame[frame["curve"] == "dcpo"]
    np.testing.assert_allclose(dcpo["upper"], 0.5 + 0.5 * np.sqrt(1 + 4 * 0.28 / p), rtol=1e-14)
    dapo = frame[frame["curve"] == "dapo"]
    assert np.all(dapo["upper"] == 1.28) and np.all(dapo["lower"] == 0.8)
    np.testing.assert_allclose(dapo["upper_new"], 1.28 * p, rtol=1e-15)

    simplex = frame[frame["curve"] == "simplex"]
    np.testing.assert_allclose(simplex["upper_var"], 1 - p, rtol=1e-12)
    np.testing.assert_allclose(simplex["lower_var"], -p, rtol=1e-15)


def test_bound_curves_rejects_bad_input():
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\]"):
        data.bound_curves([schemes.clip()], np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="share the curve id"):
        data.bound_curves([schemes.band("kl"), schemes.band("kl", delta=0.2)], np.array([0.5]))
    with pytest.raises(ValueError, match="n must be an integer"):
        data.p_grid(n=1)


def test_region_grid_classifies_every_point():
    band = schemes.band("kl", delta=0.1)
    dapo = schemes.clip_higher()
    p = np.array([0.02, 0.3, 0.9])
    q = np.linspace(0.0, 1.0, 41)
    grid = data.region_grid(band, dapo, p, q)
    assert grid.region.shape == (41, 3)
    for j, pj in enumerate(p):
        lo, hi = band_bounds(math.log(pj), "kl", delta=0.1)
        for i, qi in enumerate(q):
            r = qi / pj
            in_band = lo <= r <= hi
            in_dapo = 0.8 <= r <= 1.28
            expected = {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}[(in_band, in_dapo)]
            assert grid.region[i, j] == expected
    # The rare token: the Band allows growth DAPO clips.
    assert 1 in set(grid.region[:, 0].tolist())
    frame = grid.to_frame()
    assert len(frame) == 41 * 3 and set(frame["region_name"]) <= set(grid.labels)
    assert grid.labels[1] == "Band allows, DAPO clips"


@pytest.mark.parametrize("delta", [1e-3, 0.05, 0.1, 0.5])
def test_saturation_threshold_closed_forms_and_mirror(delta):
    # chi2: g(p, 1/p) = (1 - p)/p; TV: g(p, 1/p) = 1 - p.
    np.testing.assert_allclose(data.saturation_threshold("chi2", delta=delta)[1], 1 / (1 + delta), rtol=1e-12)
    np.testing.assert_allclose(data.saturation_threshold("tv", delta=delta)[1], 1 - delta, rtol=1e-12)
    for name in data.saturating():
        p_lo, p_up = data.saturation_threshold(name, delta=delta)
        np.testing.assert_allclose(p_lo, 1.0 - p_up, rtol=1e-9, atol=1e-13)
        if p_up > 0:
            # Just above the threshold the upper bound is the simplex limit, just below it is not.
            above, below = p_up * (1 + 1e-6), p_up * (1 - 1e-4)
            if above < 1:
                assert band_bounds(math.log(above), name, delta=delta).upper == pytest.approx(1 / above, rel=1e-12)
            assert band_bounds(math.log(below), name, delta=delta).upper < 1 / below * (1 - 1e-12)


def test_saturation_refuses_divergences_that_never_saturate():
    assert set(data.saturating()) == {"reverse_kl", "tv", "chi2", "hellinger", "js", "triangular"}
    with pytest.raises(ValueError, match="never saturates"):
        data.saturation_threshold("kl", delta=0.1)
    # Beyond h(0+) = f(0) + f'(inf) the whole interval saturates (TV: 1).
    assert data.saturation_threshold("tv", delta=1.5) == (1.0, 0.0)


def test_tail_gain_limits():
    deltas = np.array([0.01, 0.05, 0.3])
    frame = data.tail_gain(deltas=deltas, p_small=1e-10)
    kl = frame[frame["divergence"] == "kl"]
    np.testing.assert_allclose(kl["gain"], 1 - np.exp(-deltas), rtol=1e-12)
    tv = frame[frame["divergence"] == "tv"]
    np.testing.assert_allclose(tv["gain"], deltas, rtol=1e-12)
    assert float(kl["gain"].iloc[1]) == pytest.approx(0.0488, abs=5e-5)  # THEORY.md's number
    for name in ("chi2", "reverse_kl", "jeffreys"):  # f'(inf) = inf
        assert np.all(frame[frame["divergence"] == name]["gain"] == 0.0)
    finite = frame[frame["divergence"].isin(["kl", "tv", "neyman_chi2", "js", "triangular"])]
    # The exact gain at p = 1e-10 already equals the limit to ~p.
    np.testing.assert_allclose(finite["gain_at_p_small"], finite["gain"], rtol=1e-6, atol=1e-9)


def test_small_delta_expansion_converges_like_sqrt_delta():
    deltas = np.array([1e-8, 1e-6, 1e-4])
    frame = data.small_delta("kl", p=0.2, deltas=deltas)
    up = frame[frame["side"] == "upper"]
    exact = np.array([band_bounds(math.log(0.2), "kl", delta=d).upper for d in deltas])
    np.testing.assert_allclose(up["exact"], exact, rtol=1e-14)
    np.testing.assert_allclose(up["first_order"], 1 + np.sqrt(2 * deltas * 0.8 / (1.0 * 0.2)), rtol=1e-14)
    err = up["rel_error"].to_numpy()
    # Relative error O(sqrt(delta)): a factor 100 in delta is a factor ~10 in error.
    np.testing.assert_allclose(err[1:] / err[:-1], 10.0, rtol=0.05)
    second = data.small_delta("kl", p=0.2, deltas=deltas, second_order=True)
    second = second[second["side"] == "upper"]
    # Independent second-order coefficient a2 = -f3 (1 - 2p) / (3 f2^2 p) with f2 = f''(1)
    # and f3 the third derivative at 1 (KL: f2 = 1, f3 = -2).
    a2 = 2.0 * (1 - 2 * 0.2) / (3 * 0.2)
    np.testing.assert_allclose(second["second_order"], up["first_order"].to_numpy() + a2 * deltas, rtol=1e-13)
    # O(delta) relative error (above 1e-6, where the exact bound's rounding is negligible).
    err2 = data.small_delta("kl", p=0.2, deltas=np.array([1e-5, 1e-3]), second_order=True)
    err2 = err2[err2["side"] == "upper"]["rel_error_2"].to_numpy()
    assert err2[1] / err2[0] == pytest.approx(100.0, rel=0.1)
    chi2 = data.small_delta("chi2", p=0.2, deltas=np.array([0.01, 0.1]))  # exactly quadratic g (unsaturated)
    assert chi2["rel_error"].max() < 1e-12
    with pytest.raises(ValueError, match="not twice differentiable"):
        data.small_delta("tv", p=0.2, deltas=deltas)


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def _line(ax, label):
    lines = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(lines) == 1, [line.get_label() for line in ax.get_lines()]
    return lines[0]


def _partner(ax, line):
    """The line drawn right after ``line`` (the lower bound of the same curve)."""
    lines = ax.get_lines()
    return lines[lines.index(line) + 1]


@pytest.fixture(scope="module")
def rendered():
    out = {}
    for name, fn in figures.FIGURE_FUNCTIONS.items():
        fig = fn()
        # A plain Figure's base canvas draws nothing: render for real with Agg (which
        # also runs the layout engine).
        FigureCanvasAgg(fig).draw()
        out[name] = fig
    return out


def _inside(inner, outer, tol=1.0):
    return (inner.x0 >= outer.x0 - tol and inner.y0 >= outer.y0 - tol
            and inner.x1 <= outer.x1 + tol and inner.y1 <= outer.y1 + tol)


def _overlap(a, b, tol=1.0):
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


@pytest.mark.parametrize("name", FIGURES)
def test_figure_layout_keeps_text_inside_and_legends_off_the_axes(rendered, name):
    _check_layout(rendered[name], name)


def _check_layout(fig, name):
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    # Everything drawn (labels, tick labels, legends, titles) lies inside the page:
    # nothing is cut off when saved without bbox_inches="tight".
    drawn = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    assert _inside(drawn, page), f"{name}: drawn extent {drawn} leaves the figure {page}"
    plain = [ax for ax in fig.axes if ax.name != "3d"]
    # The layout engine ran: no panel sits at matplotlib's default subplot margins.
    default = (0.125, 0.11, 0.9, 0.88)
    for ax in plain:
        pos = ax.get_position()
        assert not np.allclose((pos.x0, pos.y0, pos.x1, pos.y1), default, atol=1e-3), name
    for legend in fig.legends:  # figure legends must not cover a panel
        box = legend.get_window_extent(renderer)
        assert _inside(box, page), f"{name}: legend leaves the figure"
        for ax in fig.axes:
            assert not _overlap(box, ax.get_window_extent(renderer)), f"{name}: a legend covers a panel"
    # A panel's axis labels and title stay off every other panel and its labels.
    def labels(ax):
        return [t.get_window_extent(renderer) for t in (ax.xaxis.label, ax.yaxis.label, ax.title)
                if t.get_visible() and t.get_text().strip()]

    for a in plain:
        for b in plain:
            if a is b:
                continue
            for box in labels(a):
                assert not _overlap(box, b.get_window_extent(renderer)), f"{name}: a label covers a panel"
                assert not any(_overlap(box, other) for other in labels(b)), f"{name}: labels collide"


@pytest.mark.parametrize("name", FIGURES)
def test_frozen_layout_is_laid_out(name):
    # `bandtheory figures` freezes the layout before saving (every format then has the
    # same axes); what it freezes must be a real layout, not the default margins.
    fig = figures.FIGURE_FUNCTIONS[name]()
    with style.mpl_style():
        figures.freeze_layout(fig)
        before = [ax.get_position().bounds for ax in fig.axes]
        FigureCanvasAgg(fig).draw()
    assert [ax.get_position().bounds for ax in fig.axes] == before  # frozen: saving moves nothing
    _check_layout(fig, name)


def test_every_figure_renders(rendered):
    assert tuple(rendered) == FIGURES
    from matplotlib.figure import Figure

    for name, fig in rendered.items():
        assert isinstance(fig, Figure), name
        assert fig.axes, name
        assert isinstance(fig.bandtheory_data, dict) and fig.bandtheory_data, name


def test_fig1_plots_the_library_bounds(rendered):
    ax = rendered["ratio_bounds"].axes[0]
    upper = _line(ax, "Band kl (δ=0.1)")
    x = np.asarray(upper.get_xdata(), dtype=float)
    ref = band_bounds(np.log(x), "kl", delta=0.1)
    np.testing.assert_allclose(upper.get_ydata(), ref.upper, rtol=1e-13)
    np.testing.assert_allclose(_partner(ax, upper).get_ydata(), ref.lower, rtol=1e-13, atol=1e-300)
    dcpo = _line(ax, "DCPO 0.2/0.28")
    np.testing.assert_allclose(dcpo.get_ydata(), 0.5 + 0.5 * np.sqrt(1 + 4 * 0.28 / x), rtol=1e-13)
    simplex = _line(ax, "simplex limits")
    np.testing.assert_allclose(simplex.get_ydata(), 1 / x, rtol=1e-14)

    ax = rendered["probability_variation"].axes[0]
    tv = _line(ax, "Band tv (δ=0.1)")
    x = np.asarray(tv.get_xdata(), dtype=float)
    np.testing.assert_allclose(tv.get_ydata(), np.minimum(0.1, 1 - x), rtol=1e-12)
    np.testing.assert_allclose(_partner(ax, tv).get_ydata(), -np.minimum(0.1, x), rtol=1e-12)
    np.testing.assert_allclose(_line(ax, "simplex limits").get_ydata(), 1 - x, rtol=1e-12)


def test_clipping_region_image_is_the_region_map(rendered):
    fig = rendered["clipping_region"]
    ax = fig.axes[1]
    image = ax.get_images()[0].get_array()
    frame = fig.bandtheory_data["region"]
    p = np.sort(frame["p"].unique())
    q = np.sort(frame["q"].unique())
    assert image.shape == (q.size, p.size)
    lo, hi = band_bounds(np.log(p), "kl", delta=0.1)
    ratio = q[:, None] / p[None, :]
    in_band = (ratio >= lo) & (ratio <= hi)
    in_dapo = (ratio >= 0.8) & (ratio <= 1.28)
    expected = np.select([in_band & in_dapo, in_band, in_dapo], [0, 1, 2], default=3)
    np.testing.assert_array_equal(np.asarray(image), expected)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(
        ["both allow", "Band allows, DAPO clips", "DAPO allows, Band clips", "both clip"]
    )


def test_all_divergences_draws_every_builtin(rendered):
    ax = rendered["all_divergences"].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    for name in divergences.names():
        assert f"Band {name} (δ=0.05)" in labels
    hell = _line(ax, "Band hellinger (δ=0.05)")
    x = np.asarray(hell.get_xdata(), dtype=float)
    assert x.min() == pytest.approx(1e-4) and hell.axes.get_xscale() == "log"
    np.testing.assert_allclose(hell.get_ydata(), band_bounds(np.log(x), "hellinger", delta=0.05).upper, rtol=1e-13)


def test_saturation_tail_and_small_delta_curves(rendered):
    ax = rendered["saturation"].axes[0]
    chi2 = _line(ax, "chi2")
    d = np.asarray(chi2.get_xdata(), dtype=float)
    np.testing.assert_allclose(chi2.get_ydata(), 1 / (1 + d), rtol=1e-11)
    np.testing.assert_allclose(_partner(ax, chi2).get_ydata(), d / (1 + d), rtol=1e-9)
    assert "kl" not in [line.get_label() for line in ax.get_lines()]

    ax = rendered["tail_gain"].axes[0]
    kl = _line(ax, "kl")
    d = np.asarray(kl.get_xdata(), dtype=float)
    np.testing.assert_allclose(kl.get_ydata(), -np.expm1(-d), rtol=1e-12)
    np.testing.assert_array_equal(_line(ax, "chi2").get_ydata(), 0.0)

    ax = rendered["small_delta"].axes[0]
    exact = _line(ax, "exact")
    d = np.asarray(exact.get_xdata(), dtype=float)
    ref = np.array([band_bounds(math.log(0.1), "kl", delta=v).lower for v in d])
    np.testing.assert_allclose(exact.get_ydata(), ref, rtol=1e-13, atol=1e-300)
    first = _line(ax, "first order")
    np.testing.assert_allclose(first.get_ydata(), 1 - np.sqrt(2 * d * 0.9 / 0.1), rtol=1e-13)


def test_figure_parameters_reach_the_data():
    fig = figures.ratio_bounds(delta=0.3, eps_low=0.1, eps_high=0.5, n=20)
    frame = fig.bandtheory_data["bounds"]
    assert set(frame["label"]) >= {"Band kl (δ=0.3)", "DAPO [0.9, 1.5]", "DCPO 0.1/0.5"}
    assert isinstance(frame, pd.DataFrame) and frame["p"].nunique() == 20


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_writes_every_figure_in_every_format_deterministically(tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", "--out", str(out), "--format", "pdf,png,svg"]) == 0
    captured = capsys.readouterr()
    assert "figures [" in captured.err and "7/7" in captured.err
    expected = {f"{name}.{fmt}" for name in FIGURES for fmt in ("pdf", "png", "svg")}
    assert {p.name for p in out.iterdir()} == expected
    for path in out.iterdir():
        assert path.stat().st_size > 1000, path
    assert (out / "ratio_bounds.pdf").read_bytes().startswith(b"%PDF")
    assert b"CreationDate" not in (out / "ratio_bounds.pdf").read_bytes()

    # A second run in a fresh process gives the same bytes (PDF and SVG).
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "bandtheory.cli", "figures", "--out", str(again), "--format", "pdf,svg",
         "--only", "ratio_bounds", "clipping_region", "--no-progress"],
        check=True, capture_output=True, timeout=300,
    )
    for name in ("ratio_bounds", "clipping_region"):
        for fmt in ("pdf", "svg"):
            assert (again / f"{name}.{fmt}").read_bytes() == (out / f"{name}.{fmt}").read_bytes(), (name, fmt)


def test_cli_options_and_errors(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["figures", "--out", str(out), "--format", "svg", "--only", "probability_variation",
                 "--delta", "0.2", "--no-progress"]) == 0
    assert [p.name for p in out.iterdir()] == ["probability_variation.svg"]
    capsys.readouterr()

    assert main(["figures", "--out", str(out), "--format", "pdf,jpg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bandtheory: error: unknown figure format 'jpg'; choose from pdf, png, svg (comma-separated)"

    assert main(["figures", "--out", str(out), "--only", "ratio_bound"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bandtheory: error: unknown figure 'ratio_bound'; choose from ratio_bounds,")
    assert "\n" not in err

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["figures", "--out", str(blocker), "--only", "ratio_bounds"]) == 2
    assert "is not a directory" in capsys.readouterr().err
