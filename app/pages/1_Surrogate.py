"""Surrogate page: the clipped objective and its gradient against the ratio.

For one token with old probability ``p`` and advantage ``A``, each selected scheme's
interval ``[lower(p), upper(p)]`` gives ``L(r) = min(r A, clip(r, lower, upper) A)``
(and ``max(L, c A)`` under dual clipping for ``A < 0``); where clipping bites the
gradient vanishes (shaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as common  # noqa: E402
from bandtheory.plotting import interactive as ip  # noqa: E402

DELTAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@st.cache_data(max_entries=128, show_spinner=False)
def _surrogate(specs: tuple, user: tuple, p: float, adv: float, r_max: float, dual: float | None, n: int):
    built = [common.build_scheme(spec, user) for spec in specs]
    r = [r_max * k / (n - 1) for k in range(n)]
    return ip.surrogate_frame(built, p=p, adv=adv, r=r, dual_clip=dual)


def page() -> None:
    st.title("Surrogate objective and its gradient")
    st.caption(
        "For a token with old probability p and advantage A: the clipped surrogate "
        "L(r) = min(r·A, clip(r, lower(p), upper(p))·A) against the ratio r, and dL/dr. "
        "Shaded: ratios where the scheme clips (zero gradient); dotted: the scheme's bounds."
    )
    user = common.user_items()
    c1, c2, c3 = st.columns(3)
    p = c1.number_input("old probability p", min_value=1e-8, max_value=1.0, value=0.08,
                        format="%.6g", step=0.01, key="sur_p")
    sign = c2.radio("advantage sign", ["positive", "negative"], horizontal=True, key="sur_sign")
    size = c3.slider("|A|", 0.0, 5.0, 1.0, 0.1, key="sur_size")
    adv = float(size) if sign == "positive" else -float(size)

    with st.sidebar:
        st.header("Schemes")
        names = st.multiselect("Band divergences", common.divergence_options(), default=["kl"],
                               key="sur_divs")
        delta = st.select_slider("radius δ", options=DELTAS, value=0.05, key="sur_delta")
        use_clip = st.checkbox("canonical clip", value=True, key="sur_clip")
        eps = st.slider("ε", 0.0, 1.0, 0.2, 0.01, key="sur_eps", disabled=not use_clip)
        use_ch = st.checkbox("Clip-Higher", value=True, key="sur_ch")
        eps_low = st.slider("ε_low", 0.0, 1.0, 0.2, 0.01, key="sur_eps_low")
        eps_high = st.slider("ε_high", 0.0, 3.0, 0.28, 0.01, key="sur_eps_high")
        use_dcpo = st.checkbox("DCPO (ε_low/ε_high above)", value=False, key="sur_dcpo")
        dual_on = st.checkbox("dual clip (A < 0)", value=True, key="sur_dual")
        c = st.number_input("c", min_value=1.01, max_value=100.0, value=3.0, step=0.5, key="sur_c",
                            disabled=not dual_on)
        r_max = st.slider("largest ratio drawn", 1.5, 20.0, 3.0, 0.5, key="sur_rmax")

    specs = [("band", name, float(delta), None, None) for name in names]
    if use_clip:
        specs.append(("clip", float(eps)))
    if use_ch:
        specs.append(("clip_higher", float(eps_low), float(eps_high)))
    if use_dcpo:
        specs.append(("dcpo", float(eps_low), float(eps_high)))
    if not specs:
        st.info("Choose at least one scheme in the sidebar.")
        return
    dual = float(c) if dual_on else None
    try:
        data = _surrogate(tuple(specs), user, float(p), adv, float(r_max), dual, 801)
    except (ValueError, TypeError) as exc:
        st.error(common.plain(exc))
        return
    if adv < 0 and dual is not None:
        st.caption(f"Dual clip: for A < 0 the objective is bounded below by c·A = {dual * adv:g}.")
    fig = ip.surrogate_figure(data, p=float(p), adv=adv, dual_clip=dual)
    common.chart(fig, data, stem="surrogate", key="surrogate")

    st.subheader(f"Bounds at p = {float(p):g}")
    rows = data.groupby("scheme", sort=False)[["lower", "upper"]].first()
    table = pd.DataFrame({
        "lower": rows["lower"].map(common.format_number),
        "upper": rows["upper"].map(common.format_number),
    })
    st.table(table)
    if float(p) == 1.0:
        st.caption("At p = 1 every bound is a single point: the token already holds all the mass.")


page()
