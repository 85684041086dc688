"""Lab page helpers: render bandtheory.symbolic's derivation and the convex validation.

Rendering only; every value comes from :func:`bandtheory.symbolic.derive` and
:func:`bandtheory.convex.validate`.
"""

from __future__ import annotations

import streamlit as st

import _common as common

#: (Derivation field, LaTeX prefix, separator, note field, field shown when the first is None)
_ITEMS = (
    ("g", r"g_f(p, r)", "=", None, None),
    ("upper", r"\mathrm{upper}(p, \delta)", "=", "upper_note", None),
    ("lower", r"\mathrm{lower}(p, \delta)", "=", "lower_note", None),
    ("upper_threshold", r"\mathrm{upper} = 1/p \iff", "", "upper_threshold_note", "upper_saturation"),
    ("lower_threshold", r"\mathrm{lower} = 0 \iff", "", "lower_threshold_note", "lower_saturation"),
    ("r_star", r"r^* = \lim_{p \to 1} \mathrm{lower}", "=", "r_star_note", None),
    ("r_star_equation", r"r^*\ \text{solves}", "", None, None),
    ("gain_limit", r"\lim_{p \to 0} p\,(\mathrm{upper} - 1)", "=", "gain_limit_note", None),
    ("series_upper", r"\mathrm{upper}", r"\approx", "series_note", None),
    ("series_lower", r"\mathrm{lower}", r"\approx", None, None),
)

#: Seconds of sympy work allowed for one derivation in the app.
DERIVE_TIMEOUT = 12.0


@st.cache_resource(max_entries=32, show_spinner=False)
def _derive(text: str, name: str, normalize: bool):
    from bandtheory import symbolic

    return symbolic.derive(common.parse_user(text, name or None, normalize), timeout=DERIVE_TIMEOUT)


def show_derivation(text: str, name: str, normalize: bool) -> None:
    """The derivation of a parsed user generator, item by item in LaTeX."""
    try:
        with st.spinner(f"Deriving with sympy (at most {DERIVE_TIMEOUT:g} s)…"):
            derivation = _derive(text, name, normalize)
    except (ValueError, TypeError, RuntimeError) as exc:
        st.error(f"Derivation failed: {common.plain(exc)}")
        return
    latex = dict(derivation.latex)
    for field, shown, sep, note_field, fallback in _ITEMS:
        value = getattr(derivation, field, None)
        if value is None and fallback is not None:
            field, value = fallback, getattr(derivation, fallback, None)
        note = getattr(derivation, note_field, "") if note_field else ""
        if value is None and field == "r_star_equation":
            continue  # only where f'(inf) is finite (otherwise r* = 0 is shown above)
        left, right = st.columns([3, 2])
        if value is None:
            left.latex(rf"{shown}\ :\ \text{{none}}")
        else:
            left.latex(rf"{shown} {sep} {latex.get(field) or _latex(value)}")
        if note:
            right.caption(common.plain(note))
    status = "closed forms found for both bounds" if derivation.closed_form else (
        "no closed form for at least one bound: bandtheory uses the exact numeric root (band_bounds)"
    )
    st.caption(f"Derivation summary: {status}.")


def _latex(expr) -> str:
    import sympy as sp

    return sp.latex(expr)


#: Choices offered for the validation grid (kept small: each point is a convex solve).
VALIDATION_DELTAS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
VALIDATION_PS = (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
VALIDATION_KS = (10, 50, 100, 500)


@st.cache_data(max_entries=16, show_spinner=False)
def _validate(text: str, name: str, normalize: bool, deltas: tuple, ps: tuple, ks: tuple, seeds: int):
    from bandtheory import convex

    div = common.parse_user(text, name or None, normalize)
    return convex.validate(div, deltas=deltas, ps=ps, k=ks, seeds=tuple(range(seeds)))


def show_validation(text: str, name: str, normalize: bool) -> None:
    """Settings, a run button (with spinner) and the report of :func:`bandtheory.convex.validate`."""
    convex = common.optional_module("bandtheory.convex", "The validation against the convex solver")
    if convex is None or not hasattr(convex, "validate"):
        if convex is not None:
            st.info("The validation needs `bandtheory.convex.validate`, which this installation lacks.")
        return
    from bandtheory.plotting import interactive as ip

    st.caption(
        "Compares, on a grid of p and δ and on random full distributions π_old (Dirichlet), "
        "the closed form (if any), the numeric Band (band_bounds) and the convex program over "
        "the whole simplex. Each point is a convex solve: keep the grid small."
    )
    c1, c2, c3, c4 = st.columns(4)
    deltas = c1.multiselect("δ values", VALIDATION_DELTAS, default=[0.05, 0.2], key="lab_val_deltas")
    n_ps = c2.slider("p grid points", 2, len(VALIDATION_PS), 5, key="lab_val_np")
    ks = c3.multiselect("random distribution sizes K", VALIDATION_KS, default=[10], key="lab_val_ks")
    seeds = c4.slider("seeds", 1, 3, 1, key="lab_val_seeds")
    # Spread the chosen number of p values over the offered range.
    index = sorted({round(i * (len(VALIDATION_PS) - 1) / (n_ps - 1)) for i in range(n_ps)})
    ps = tuple(VALIDATION_PS[i] for i in index)
    size = len(deltas) * (len(ps) + 3 * seeds * len(ks))
    st.caption(f"{size} convex solves (each of the two bounds) at p ∈ {{{', '.join(f'{p:g}' for p in ps)}}}.")
    settings = (tuple(sorted(deltas)), ps, tuple(sorted(ks)), int(seeds))
    state_key = "lab_validation"
    if st.button("Run validation", key="lab_val_run", disabled=not deltas):
        try:
            with st.spinner("Solving the convex programs… (a user divergence uses cutting planes: "
                            "expect seconds to a minute)"):
                report = _validate(text, name, normalize, *settings)
        except (ValueError, TypeError, RuntimeError) as exc:
            st.error(f"Validation failed: {common.plain(exc)}")
            return
        st.session_state[state_key] = ((text, name, normalize, settings), report)
    stored = st.session_state.get(state_key)
    if stored is None or stored[0] != (text, name, normalize, settings):
        return
    report = stored[1]
    if report.passed:
        st.success(f"PASS: every route agrees within tolerance (convex method: {report.method}).")
    else:
        st.error(f"FAIL: see the table (convex method: {report.method}).")
    checks = [{"check": n, "result": "ok" if ok else "FAIL", "detail": d} for n, ok, d in report.checks]
    st.table(checks)
    if len(report.summary):
        summary = report.summary.copy()
        summary["verdict"] = summary["ok"].map({True: "PASS", False: "FAIL"})
        st.table(summary.drop(columns=["ok"]))
        fig = ip.validation_figure(report.comparisons, x="p", y="abs_diff", color="pair",
                                   title=f"Disagreement between routes ({report.divergence})")
        common.chart(fig, report.comparisons, stem=f"validation_{report.divergence}", key="lab_val")
