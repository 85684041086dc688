"""The one style of every bandtheory figure, for matplotlib and plotly alike.

Colours come from the Okabe-Ito palette (safe for the common colour-vision
deficiencies), extended by Paul Tol's "muted" colours where more are needed. Each
scheme and divergence has a *fixed* colour and line style, so that KL is the same blue
in the paper's figures, the notebooks and the app. Line styles double the colour
coding, so curves stay distinguishable in greyscale print.

Matplotlib: :func:`mpl_style` is a context manager applying :data:`RC_PARAMS` (one
sans-serif family, DejaVu Sans, which ships with matplotlib so that every machine
renders the same glyphs; sizes readable at a 3.5 in column width; TrueType fonts in
PDF). :func:`save_metadata` gives the ``metadata`` to pass to ``savefig`` so that PDF
and SVG bytes do not depend on the date.

Plotly: :func:`plotly_template` returns a template with the same palette, font and
sizes.

References:
    M. Okabe and K. Ito, Color Universal Design (2002); P. Tol, Colour Schemes,
    SRON/EPS/TN/09-002 (2021).
"""

from __future__ import annotations

import contextlib
import types
import zlib
from typing import Any, Iterator, Mapping

__all__ = [
    "OKABE_ITO",
    "PALETTE",
    "COLORS",
    "LINESTYLES",
    "REGION_COLORS",
    "RC_PARAMS",
    "FONT_FAMILY",
    "COLUMN_WIDTH",
    "TEXT_WIDTH",
    "color_for",
    "linestyle_for",
    "dash_for",
    "style_key",
    "mpl_style",
    "save_metadata",
    "plotly_template",
]

#: The eight Okabe-Ito colours.
OKABE_ITO: Mapping[str, str] = types.MappingProxyType(
    {
        "black": "#000000",
        "orange": "#E69F00",
        "sky_blue": "#56B4E9",
        "bluish_green": "#009E73",
        "yellow": "#F0E442",
        "blue": "#0072B2",
        "vermillion": "#D55E00",
        "reddish_purple": "#CC79A7",
    }
)

# Extra colours (Tol "muted") for the names Okabe-Ito cannot cover; yellow is left out
# of line colours because it vanishes on white.
_TOL = {
    "indigo": "#332288",
    "wine": "#882255",
    "olive": "#999933",
    "teal": "#44AA99",
    "grey": "#777777",
}

#: Fixed colour per scheme or divergence name.
COLORS: Mapping[str, str] = types.MappingProxyType(
    {
        # divergences (the paper's three first)
        "kl": OKABE_ITO["blue"],
        "tv": OKABE_ITO["vermillion"],
        "chi2": OKABE_ITO["bluish_green"],
        "reverse_kl": OKABE_ITO["sky_blue"],
        "neyman_chi2": OKABE_ITO["reddish_purple"],
        "hellinger": OKABE_ITO["orange"],
        "js": _TOL["indigo"],
        "jeffreys": _TOL["wine"],
        "triangular": _TOL["olive"],
        # fixed and heuristic schemes
        "clip": _TOL["grey"],
        "clip_higher": OKABE_ITO["black"],
        "dapo": OKABE_ITO["black"],
        "dcpo": _TOL["teal"],
        # reference curves
        "simplex": "#9A9A9A",
        "theory": "#9A9A9A",
        "expansion": OKABE_ITO["black"],
    }
)

#: Fallback colours (for user divergences such as ``alpha(2/3)``), chosen by a stable
#: hash of the name so that a name keeps its colour between runs.
PALETTE: tuple[str, ...] = (
    OKABE_ITO["blue"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["bluish_green"],
    OKABE_ITO["reddish_purple"],
    OKABE_ITO["orange"],
    OKABE_ITO["sky_blue"],
    _TOL["indigo"],
    _TOL["wine"],
    _TOL["olive"],
    _TOL["teal"],
)

#: Fixed matplotlib line style per name (dash patterns double the colour code).
LINESTYLES: Mapping[str, Any] = types.MappingProxyType(
    {
        "kl": "-",
        "tv": "-",
        "chi2": "-",
        "reverse_kl": (0, (5, 1.5)),
        "neyman_chi2": (0, (5, 1.5)),
        "hellinger": (0, (5, 1.5)),
        "js": (0, (1.5, 1)),
        "jeffreys": (0, (1.5, 1)),
        "triangular": (0, (1.5, 1)),
        "clip": (0, (6, 2, 1.5, 2)),
        "clip_higher": (0, (4, 2)),
        "dapo": (0, (4, 2)),
        "dcpo": (0, (6, 2, 1.5, 2)),
        "simplex": (0, (1, 1.5)),
        "theory": (0, (1, 1.5)),
        "expansion": (0, (3, 1.5)),
    }
)

# The same patterns in plotly's vocabulary.
_PLOTLY_DASH = {
    "-": "solid",
    (0, (5, 1.5)): "dash",
    (0, (1.5, 1)): "dot",
    (0, (6, 2, 1.5, 2)): "dashdot",
    (0, (4, 2)): "longdash",
    (0, (1, 1.5)): "dot",
    (0, (3, 1.5)): "dash",
}

#: Colours of the four regions of the clipping-region figure (paper Fig. 2), keyed by
#: the region labels of :data:`bandtheory.plotting.data.REGIONS`.
REGION_COLORS: Mapping[str, str] = types.MappingProxyType(
    {
        "both allow": "#A8A8A8",
        "Band allows, other clips": OKABE_ITO["blue"],
        "other allows, Band clips": OKABE_ITO["orange"],
        "both clip": "#EFEFEF",
    }
)

#: The single font family of every figure (bundled with matplotlib: same glyphs on
#: every machine).
FONT_FAMILY = "DejaVu Sans"
#: Single-column and full text widths in inches (two-column paper layout).
COLUMN_WIDTH = 3.4
TEXT_WIDTH = 7.0

#: Matplotlib rcParams of every bandtheory figure (the colour cycle, :data:`PALETTE`, is
#: added by :func:`mpl_style`).
RC_PARAMS: Mapping[str, Any] = types.MappingProxyType(
    {
        "font.family": "sans-serif",
        "font.sans-serif": [FONT_FAMILY],
        "mathtext.fontset": "dejavusans",
        "font.size": 8.0,
        "axes.titlesize": 8.5,
        "axes.labelsize": 8.0,
        "xtick.labelsize": 7.0,
        "ytick.labelsize": 7.0,
        "legend.fontsize": 6.5,
        "legend.frameon": False,
        "legend.handlelength": 2.6,
        "lines.linewidth": 1.3,
        "lines.solid_capstyle": "round",
        "lines.dash_capstyle": "butt",
        "axes.linewidth": 0.6,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.linewidth": 0.4,
        "grid.alpha": 0.35,
        "xtick.major.width": 0.6,
        "ytick.major.width": 0.6,
        "xtick.minor.width": 0.4,
        "ytick.minor.width": 0.4,
        "figure.figsize": (COLUMN_WIDTH, 2.5),
        "figure.dpi": 100,
        "figure.constrained_layout.use": True,
        "savefig.dpi": 300,
        "savefig.format": "pdf",
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "svg.fonttype": "path",
        "svg.hashsalt": "bandtheory",
        "image.cmap": "cividis",
    }
)


def style_key(item: Any) -> str:
    """The colour/line-style key of a name, divergence or scheme.

    A Band scheme is keyed by its divergence (Band KL is the KL colour); a Divergence by
    its name; any other scheme by its ``name``; a string is used as is.
    """
    if isinstance(item, str):
        return item.strip()
    divergence = getattr(item, "divergence", None)
    if divergence is not None and hasattr(divergence, "name"):
        return str(divergence.name)
    name = getattr(item, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(
        f"expected a name, a Divergence or a scheme, got {type(item).__name__}"
    )


def color_for(name: Any) -> str:
    """The fixed hex colour of a scheme or divergence (name, entry or scheme object).

    Known names (:data:`COLORS`) have a fixed colour; any other name (``"alpha(2/3)"``)
    gets one of :data:`PALETTE` chosen by a stable hash of the name.
    """
    key = style_key(name)
    if key in COLORS:
        return COLORS[key]
    return PALETTE[zlib.crc32(key.encode("utf-8")) % len(PALETTE)]


def linestyle_for(name: Any) -> Any:
    """The fixed matplotlib line style of a scheme or divergence (solid if unknown)."""
    return LINESTYLES.get(style_key(name), "-")


def dash_for(name: Any) -> str:
    """The plotly ``line.dash`` value matching :func:`linestyle_for`."""
    return _PLOTLY_DASH.get(linestyle_for(name), "solid")


def _rc() -> dict[str, Any]:
    from cycler import cycler

    params = dict(RC_PARAMS)
    params["axes.prop_cycle"] = cycler(color=list(PALETTE))
    return params


@contextlib.contextmanager
def mpl_style() -> Iterator[None]:
    """Context manager: matplotlib rcParams of :data:`RC_PARAMS` inside the block.

    Figures must be *created* inside the block (rcParams are read at creation); saving
    may happen outside, with ``metadata=save_metadata(fmt)``.
    """
    import matplotlib as mpl

    with mpl.rc_context(_rc()):
        yield


def save_metadata(fmt: str) -> dict[str, Any]:
    """``savefig`` metadata that makes the output bytes independent of date and version.

    Args:
        fmt: ``"pdf"``, ``"svg"`` or ``"png"``.

    Returns:
        A fresh dict for ``Figure.savefig(..., metadata=...)``.
    """
    fmt = fmt.lower()
    if fmt == "pdf":
        return {"Creator": "bandtheory", "Producer": None, "CreationDate": None, "ModDate": None}
    if fmt == "svg":
        return {"Creator": "bandtheory", "Date": None}
    if fmt == "png":
        return {"Software": "bandtheory"}
    raise ValueError(f"unknown figure format {fmt!r}; choose one of pdf, png, svg")


def plotly_template() -> Any:
    """A plotly layout template matching the matplotlib style (a fresh object).

    Use as ``fig.update_layout(template=plotly_template())``; line colours and dashes
    per name come from :func:`color_for` and :func:`dash_for`.
    """
    import plotly.graph_objects as go

    axis = dict(
        showline=True,
        linecolor="#333333",
        linewidth=1,
        ticks="outside",
        gridcolor="#E6E6E6",
        zeroline=False,
        mirror=False,
    )
    return go.layout.Template(
        layout=dict(
            font=dict(family=f"{FONT_FAMILY}, Verdana, sans-serif", size=13, color="#222222"),
            colorway=list(PALETTE),
            paper_bgcolor="white",
            plot_bgcolor="white",
            xaxis=axis,
            yaxis=axis,
            legend=dict(bgcolor="rgba(255,255,255,0.8)", font=dict(size=11)),
            hoverlabel=dict(font=dict(family=f"{FONT_FAMILY}, sans-serif")),
            margin=dict(l=60, r=20, t=40, b=50),
            colorscale=dict(sequential="cividis"),
        ),
        data=dict(scatter=[go.Scatter(line=dict(width=2))]),
    )
