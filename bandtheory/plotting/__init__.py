"""Figures of the Band: data builders, one style, and matplotlib figure functions.

- :mod:`bandtheory.plotting.style`: the palette (fixed colour per scheme and divergence),
  the matplotlib style and the matching plotly template;
- :mod:`bandtheory.plotting.data`: pure data builders (tidy frames) shared by every
  backend;
- :mod:`bandtheory.plotting.figures`: the paper's figures with matplotlib (each returns
  a ``Figure``; nothing is saved or shown).

Importing this package does not import matplotlib or plotly.
"""

from . import data, style
from .style import color_for, mpl_style, plotly_template

__all__ = ["data", "style", "color_for", "mpl_style", "plotly_template", "FIGURES"]

#: Names of the paper figures, in the order ``bandtheory figures`` renders them.
FIGURES: tuple[str, ...] = (
    "ratio_bounds",
    "probability_variation",
    "clipping_region",
    "all_divergences",
    "saturation",
    "tail_gain",
    "small_delta",
)
