"""Divergence lab: type a generator f(u), see it checked, derived and validated.

The text goes through bandtheory's AST-whitelist parser (nothing in it is executed);
a refusal is shown with the parser's message. A convex generator with f(1) = 0 is
derived symbolically (g, closed forms or their absence, saturation, limits, series) and
validated against the convex solver; it can then be added to the Bands page for this
session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as common  # noqa: E402
from bandtheory import divergences  # noqa: E402

EXAMPLES = {
    "exp(u - 1) - u": "exponential (not built in)",
    "(u - 1)**2 / u": "Neyman chi2 (built in as neyman_chi2)",
    "u*log(u) - u + 1": "reverse KL",
    "(9/10)*(u**(5/3) - 1 - (5/3)*(u - 1))": "Cressie-Read, lambda = 2/3",
    "abs(u - 1)": "2 x total variation",
}


def _latex(expr) -> str:
    import sympy as sp

    return sp.latex(expr)


def _parse_section(text: str, name: str, normalize: bool):
    """Parse and check; show the result. Returns the Divergence or None."""
    try:
        with st.spinner("Parsing and checking f(u)…"):
            div = common.parse_user(text, name or None, normalize)
    except (ValueError, TypeError) as exc:
        st.error(f"Refused: {common.plain(exc)}")
        st.caption("Nothing in the text was executed: it is parsed by an AST whitelist "
                   "(u, numbers, + − * / **, parentheses, log/exp/sqrt/abs).")
        return None
    extra = dict(div.extra)
    st.success(common.plain(f"Parsed and checked: a valid f-divergence generator ({div.name})."))
    st.latex(rf"f(u) = {_latex(div.f)}")
    cols = st.columns(4)
    cols[0].metric("f(1) = 0", "yes", help=f"normalisation: {extra.get('normalization', 'none')}")
    cols[1].metric("f(0+)", common.format_number(float(extra.get("f_at_0", div.f_at_0))))
    cols[2].metric("f'(∞) = lim f(u)/u", common.format_number(float(extra.get("slope_at_inf", div.slope_at_inf))))
    cols[3].metric("f''(1)", common.format_number(float(extra.get("curvature_at_1", div.curvature_at_1))))
    st.markdown(f"**Convexity:** {common.plain(extra.get('convexity', 'checked'))}")
    if extra.get("normalization", "none") != "none":
        st.markdown(f"**Normalisation applied:** {common.plain(extra['normalization'])}")
    return div


def _derive_section(text: str, name: str, normalize: bool) -> None:
    symbolic = common.optional_module("bandtheory.symbolic", "The symbolic derivation")
    if symbolic is None:
        return
    import _lab

    _lab.show_derivation(text, name, normalize)


def _validate_section(text: str, name: str, normalize: bool) -> None:
    import _lab

    _lab.show_validation(text, name, normalize)


def page() -> None:
    st.title("Divergence lab")
    st.caption(
        "Type a generator f(u) of an f-divergence D_f(π‖π_old) = Σ π_old f(π/π_old). "
        "It must be convex on (0, ∞) with f(1) = 0. Allowed: the symbol u, numbers, "
        "+ − * / **, parentheses, log, exp, sqrt, abs."
    )
    c1, c2 = st.columns([3, 1])
    text = c1.text_input("f(u)", value="exp(u - 1) - u", key="lab_expr")
    name = c2.text_input("name", value="my_f", max_chars=64, key="lab_name")
    with st.expander("examples"):
        for example, what in EXAMPLES.items():
            st.code(example, language=None)
            st.caption(what)
    normalize = st.checkbox("normalise: use f(u) − f(1) − f'(1)(u − 1) when f(1) ≠ 0", key="lab_norm")
    if not text.strip():
        st.info("Type a generator f(u) above.")
        return
    if name.strip() in divergences.names():
        st.error(common.plain(f"The name {name.strip()!r} is taken by a built-in divergence; choose another."))
        return
    div = _parse_section(text, name.strip(), normalize)
    if div is None:
        return

    name = name.strip()
    if not name:
        st.info("Give the divergence a name to add it to the Bands page.")
    else:
        added = name in common.user_divergences()
        if st.button("Add to the Bands page" if not added else "Update on the Bands page", key="lab_add",
                     type="primary"):
            common.add_user_divergence(name, text, normalize=normalize)
            st.toast(common.plain(f"{name} added to the Bands page for this session."))
            added = True
        if added:
            st.caption(common.plain(f"{name} is offered on the Bands, Surrogate and Region pages "
                                    "for this session."))

    st.header("Derivation")
    _derive_section(text, name, normalize)
    st.header("Validation against the convex solver")
    _validate_section(text, name, normalize)


page()
