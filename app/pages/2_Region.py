"""Region page: the paper's Fig. 2 made interactive.

Over the plane (pi_old, pi_new) every point is classified as "both allow", "Band allows,
other clips", "other allows, Band clips" or "both clip", for a Band against a chosen
fixed scheme; drawn as a heatmap and as a 3-D surface of the ratio.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as common  # noqa: E402
from bandtheory.plotting import data as pdata  # noqa: E402
from bandtheory.plotting import interactive as ip  # noqa: E402

DELTAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
OTHERS = {"clip_higher": "Clip-Higher (DAPO)", "clip": "canonical clip", "dcpo": "DCPO"}


@st.cache_data(max_entries=64, show_spinner=False)
def _regions(band_spec: tuple, other_spec: tuple, user: tuple, n: int):
    band = common.build_scheme(band_spec, user)
    other = common.build_scheme(other_spec, user)
    grid = pdata.region_grid(band, other, pdata.p_grid(n=n, p_min=1e-3, p_max=1.0),
                             pdata.p_grid(n=n, p_min=1e-3, p_max=1.0))
    return grid, grid.to_frame()


def page() -> None:
    st.title("Clipping region")
    st.caption(
        "Which updates (π_old → π_new) each scheme allows: the paper's Fig. 2 for any Band "
        "against any fixed scheme. Height in the 3-D view is the ratio π_new / π_old."
    )
    user = common.user_items()
    left, right = st.columns(2)
    with left:
        st.subheader("Band")
        name = st.selectbox("divergence", common.divergence_options(), key="region_div")
        delta = st.select_slider("radius δ", options=DELTAS, value=0.1, key="region_delta")
    with right:
        st.subheader("Compared with")
        kind = st.selectbox("scheme", list(OTHERS), format_func=OTHERS.__getitem__, key="region_other")
        if kind == "clip":
            eps = st.slider("ε", 0.0, 1.0, 0.2, 0.01, key="region_eps")
            other_spec = ("clip", float(eps))
        else:
            c1, c2 = st.columns(2)
            low = c1.slider("ε_low", 0.0, 1.0, 0.2, 0.01, key="region_eps_low")
            high = c2.slider("ε_high", 0.0, 2.0, 0.28, 0.01, key="region_eps_high")
            other_spec = (kind, float(low), float(high))
    with st.expander("grid"):
        n = st.slider("points per axis", 30, 300, 120, 10, key="region_n")
        z_max = st.slider("largest ratio drawn in 3-D", 1.5, 20.0, 5.0, 0.5, key="region_zmax")
    band_spec = ("band", name, float(delta), None, None)
    try:
        grid, data = _regions(band_spec, other_spec, user, int(n))
    except (ValueError, TypeError) as exc:
        st.error(common.plain(exc))
        return

    shares = data["region"].value_counts(normalize=True).reindex(range(4), fill_value=0.0)
    cols = st.columns(4)
    for col, name, share in zip(cols, grid.labels, shares):
        col.metric(name, f"{100 * share:.1f}%", help="share of the drawn (π_old, π_new) grid")
    heat, surface = st.tabs(["heatmap", "3-D surface"])
    with heat:
        common.chart(ip.region_heatmap(grid), data, stem="region_heatmap", key="region_heat")
    with surface:
        common.chart(ip.region_surface(grid, z_max=z_max), data, stem="region_surface", key="region_surf")


page()
