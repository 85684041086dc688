"""bandtheory app: entry point and the Bands page.

Run with ``streamlit run app/streamlit_app.py`` (``make app`` serves it on 127.0.0.1).
This file holds the Bands page and the navigation to the other pages in ``app/pages/``.
The page reads widgets, calls :mod:`bandtheory` (through the cached helpers of
``_common``) and renders; the URL's query parameters hold its state for sharing.

The file is also the server's ASGI app (``app`` at the end): ``streamlit run`` finds it
and serves this same script through ``st.App``, whose startup (:func:`warm_up`) imports
the library and computes the default view before the first request, so that the first
visitor of a fresh server is served from the caches like every later one. Every run
ends with ``_common.settle_heap``: the long-lived heap is frozen out of the garbage
collector's full passes, which otherwise cost 70-170 ms in most reruns.

Speed: importing this file costs only streamlit. On a session's first run the page
shows its title and an empty chart first, so the browser loads and compiles plotly's
code (several MB) while the server imports bandtheory, pandas and plotly (on a fresh
server, with the controls and an empty table meanwhile) and computes the bounds.
Curves, figure and table are cached per widget state; the table is sent before the
chart, and (except on a fresh server's first run) both before the controls. The table
is one HTML element: ``st.table`` would render each of its ~180 cells through
Streamlit's Markdown component, at every rerun, before the browser draws the chart.
The chart is drawn with the library's own plotly template (``theme=None``), as in the
PNG/SVG downloads. Measurements: benchmarks/README.md, "The app (Bands page)".
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import streamlit as st

_APP_DIR = Path(__file__).resolve().parent
if str(_APP_DIR) not in sys.path:
    sys.path.insert(0, str(_APP_DIR))

if __name__ == "__main__":
    # The app's script. Imported as a module (by uvicorn, see ``app`` at the end), the
    # helpers are imported by warm_up, once Streamlit's runtime has started: their caches
    # then find the runtime's storage when they are declared.
    import _common as common  # noqa: E402

#: The log-scale radius slider: 1, 1.5, 2, 3, 5, 7 per decade from 1e-3 to 1.
DELTAS: tuple[float, ...] = tuple(
    float(f"{m * 10.0**e:.6g}") for e in (-3, -2, -1) for m in (1, 1.5, 2, 3, 5, 7)
) + (1.0,)

VIEW_LABELS = {"ratio": "ratio bounds", "variation": "probability variation p·(r−1)",
               "new_prob": "new-probability bounds p·r"}


def _views() -> dict[str, str]:
    """The views of a bound frame (:data:`bandtheory.plotting.interactive.VIEWS`)."""
    from bandtheory.plotting import interactive as ip

    return dict(ip.VIEWS)


def _nearest_delta(value: float) -> float:
    return min(DELTAS, key=lambda d: abs(math.log(d) - math.log(value)))


def _parse_float(text: str, low: float, high: float) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and low <= value <= high else None


def _parse_bool(text: str) -> bool | None:
    return {"1": True, "true": True, "0": False, "false": False}.get(str(text).lower())


def _state() -> tuple[tuple, ...]:
    """(widget key, query name, default, parse(text) -> value or None, dump(value) -> text).

    A function, not a constant: the defaults come from the registry, imported on first use.
    """
    from bandtheory import divergences

    # A fresh session shows every built-in divergence of the registry.
    return (
        ("bands_divs", "div", list(divergences.names()),
         lambda t: [s for s in (x.strip() for x in t.split(",")) if s] or None, lambda v: ",".join(v)),
        ("bands_delta", "delta", common.DEFAULTS["delta"],
         lambda t: (lambda v: None if v is None else _nearest_delta(v))(_parse_float(t, 1e-9, 1e9)), lambda v: f"{v:g}"),
        ("bands_clip", "clip", True, _parse_bool, lambda v: str(int(v))),
        ("bands_eps", "eps", common.DEFAULTS["eps"], lambda t: _parse_float(t, 0.0, 1.0), lambda v: f"{v:g}"),
        ("bands_ch", "ch", True, _parse_bool, lambda v: str(int(v))),
        ("bands_eps_low", "eps_low", common.DEFAULTS["eps_low"], lambda t: _parse_float(t, 0.0, 1.0), lambda v: f"{v:g}"),
        ("bands_eps_high", "eps_high", common.DEFAULTS["eps_high"], lambda t: _parse_float(t, 0.0, 3.0), lambda v: f"{v:g}"),
        ("bands_dcpo", "dcpo", False, _parse_bool, lambda v: str(int(v))),
        ("bands_dcpo_low", "dcpo_low", common.DEFAULTS["eps_low"], lambda t: _parse_float(t, 0.0, 2.0), lambda v: f"{v:g}"),
        ("bands_dcpo_high", "dcpo_high", common.DEFAULTS["eps_high"], lambda t: _parse_float(t, 0.0, 2.0), lambda v: f"{v:g}"),
        ("bands_relax", "relax", False, _parse_bool, lambda v: str(int(v))),
        ("bands_cap", "cap", False, _parse_bool, lambda v: str(int(v))),
        ("bands_cap_max", "cap_max", 100.0, lambda t: _parse_float(t, 1.0, 1e6), lambda v: f"{v:g}"),
        ("bands_view", "view", "ratio", lambda t: t if t in _views() else None, str),
        ("bands_x", "x", "linear", lambda t: t if t in ("linear", "log") else None, str),
        ("bands_n", "n", 500, lambda t: (lambda v: None if v is None else int(v))(_parse_float(t, 50, 2000)), str),
    )


def _init_state() -> None:
    """Widget values: kept in the session; on a fresh session, read from the URL."""
    saved = st.session_state.setdefault("_bands_saved", {})
    state = _state()
    if not saved:
        params = st.query_params
        for key, query, default, parse, _ in state:
            value = parse(params[query]) if query in params else None
            saved[key] = default if value is None else value
    for key, *_ in state:
        if key not in st.session_state:
            st.session_state[key] = saved[key]


def _save_state() -> None:
    saved = st.session_state["_bands_saved"]
    query = {}
    for key, name, _, _, dump in _state():
        saved[key] = st.session_state[key]
        query[name] = dump(st.session_state[key])
    if dict(st.query_params) != query:
        st.query_params.from_dict(query)


def _sidebar() -> None:
    sb = st.sidebar
    sb.header("Band")
    selected = st.session_state["bands_divs"]
    options = common.divergence_options()
    options += [name for name in selected if name not in options]
    sb.multiselect(
        "divergences", options, key="bands_divs", accept_new_options=True,
        help="Every built-in of the registry and the divergences added on the Lab page. "
             "Type alpha(a), e.g. alpha(1/2), for an Amari alpha-divergence.",
    )
    sb.select_slider("radius δ (log scale)", options=DELTAS, key="bands_delta",
                     format_func=lambda d: f"{d:g}")
    sb.checkbox("relax: at least Clip-Higher (heuristic)", key="bands_relax",
                help="Official BandPO option: lower = min(lower, 1−ε_low), upper = max(upper, 1+ε_high).")
    cap_cols = sb.columns([1, 1])
    cap_cols[0].checkbox("cap upper (heuristic)", key="bands_cap")
    cap_cols[1].number_input("upper_max", min_value=1.0, max_value=1e6, step=1.0, key="bands_cap_max",
                             disabled=not st.session_state["bands_cap"])
    sb.header("Fixed clipping")
    sb.checkbox("canonical clip [1−ε, 1+ε]", key="bands_clip")
    sb.slider("ε", 0.0, 1.0, step=0.01, key="bands_eps", disabled=not st.session_state["bands_clip"])
    sb.checkbox("Clip-Higher [1−ε_low, 1+ε_high]", key="bands_ch")
    sb.slider("ε_low", 0.0, 1.0, step=0.01, key="bands_eps_low")
    sb.slider("ε_high", 0.0, 3.0, step=0.01, key="bands_eps_high")
    sb.checkbox("DCPO", key="bands_dcpo")
    dcpo_on = st.session_state["bands_dcpo"]
    sb.slider("DCPO ε_low", 0.0, 2.0, step=0.01, key="bands_dcpo_low", disabled=not dcpo_on)
    sb.slider("DCPO ε_high", 0.0, 2.0, step=0.01, key="bands_dcpo_high", disabled=not dcpo_on)
    sb.header("Plot")
    sb.slider("points", 50, 2000, step=50, key="bands_n")


def _specs_of(values, user: tuple) -> tuple[tuple, list[str]]:
    """Scheme specs (``_common.build_scheme``) from the widget values, and warnings.

    ``values`` maps the widget keys of :func:`_state` to their values (the session state,
    or the defaults in :func:`warm_up`).
    """
    relax = (values["bands_eps_low"], values["bands_eps_high"]) if values["bands_relax"] else None
    cap = float(values["bands_cap_max"]) if values["bands_cap"] else None
    specs, warnings = [], []
    for name in values["bands_divs"]:
        try:
            common.resolve(name, user)
        except (ValueError, TypeError) as exc:
            warnings.append(f"{name}: {exc}")
            continue
        specs.append(("band", name, float(values["bands_delta"]), relax, cap))
    if values["bands_clip"]:
        specs.append(("clip", float(values["bands_eps"])))
    if values["bands_ch"]:
        specs.append(("clip_higher", float(values["bands_eps_low"]), float(values["bands_eps_high"])))
    if values["bands_dcpo"]:
        specs.append(("dcpo", float(values["bands_dcpo_low"]), float(values["bands_dcpo_high"])))
    return tuple(specs), warnings


def _specs() -> tuple[tuple, tuple, list[str]]:
    """Scheme specs from the widgets, the user divergences used, and warnings."""
    user = common.user_items()
    specs, warnings = _specs_of(st.session_state, user)
    return specs, user, warnings


def _slot(first: bool):
    """A place in the page for a group of elements, filled later in the run.

    On a session's first run an ``st.empty``, whose stand-in the real content replaces;
    on reruns a plain container at the same place (an ``st.empty`` would clear the chart
    at each rerun, and the browser would then draw it from scratch).
    """
    return st.empty() if first else st.container()


def _fill(slot, first: bool):
    """The container to write the real content of a :func:`_slot` into."""
    return slot.container() if first else slot


def _view_controls(box) -> None:
    """The view, p-axis and value-axis widgets above the chart."""
    cols = box.columns([2, 1, 1])
    cols[0].radio("view", list(_views()), key="bands_view", horizontal=True,
                  format_func=VIEW_LABELS.__getitem__)
    cols[1].radio("p axis", ["linear", "log"], key="bands_x", horizontal=True)
    cols[2].checkbox("log value axis", key="bands_logy",
                     disabled=st.session_state["bands_view"] == "variation")


def _table(table, view: str) -> None:
    """The table of bounds (:func:`bandtheory.plotting.interactive.bounds_table`) with its title."""
    shown = table.map(common.format_number)
    shown.index = [f"{scheme} · {side}" for scheme, side in table.index]
    st.subheader("Bounds at selected p")
    st.html(common.html_table(shown))
    st.caption(
        f"{VIEW_LABELS[view].capitalize()} from bandtheory.schemes at the p shown. "
        "The page's state is in the URL: copy it to share this view."
    )


def _view_of(values) -> tuple[bool, int, str, bool]:
    """(log_x, points, view, log_y) of the chart and table from the widget values."""
    return (values["bands_x"] == "log", int(values["bands_n"]), values["bands_view"],
            bool(values.get("bands_logy", False)))


def _results(specs: tuple, user: tuple, chart_slot, table_slot, first: bool) -> None:
    """The table of bounds, then the chart (the table sits below the chart on the page).

    Sent in this order, the browser shows the numbers at once and then draws the chart,
    the slowest element of the page.
    """
    log_x, n, view, log_y = _view_of(st.session_state)
    with _fill(table_slot, first):
        _table(common.table(specs, user, view), view)
    fig = common.bands_figure(specs, user, log_x, n, view, log_y)
    with _fill(chart_slot, first):
        common.chart(fig, lambda: common.curves(specs, user, log_x, n), stem=f"bands_{view}", key="bands")


def bands_page() -> None:
    """The Bands page: ratio bounds of every chosen scheme against the old probability.

    Widget values are read from the session state (every widget has a key), so the
    widgets need not come first. On the first run of a fresh server's first session
    they do, after the stand-ins (module docstring), so that the browser loads and
    renders them while the server imports the library and computes. Otherwise (a rerun,
    or a new visitor of a running server) the widgets are sent after the results, so
    that the browser draws the table and the chart before it renders the controls; on a
    rerun it already shows the new value of the widget that changed.
    """
    ss = st.session_state
    st.title("Bands: trust-region ratio bounds")
    st.caption(
        "The Band of a token with old probability p is the interval of ratios r = π_new/π_old "
        "that an f-divergence ball of radius δ allows; unlike fixed clipping it lets rare "
        "tokens gain real probability. Solid lines: upper bounds; dashed: lower bounds; "
        "dotted grey: the simplex limits r = 0 and r = 1/p."
    )
    controls = st.container()
    first = not ss.get("_bands_drawn")
    # Controls before the results only while the server still imports the library (its
    # first session): the browser renders them during those seconds. Once it is
    # imported, the results take milliseconds and go first, as on a rerun.
    controls_first = first and not common.library_imported()
    chart_slot, table_slot = _slot(first), _slot(first)
    if first:
        common.chart_placeholder(chart_slot, height=540, text="computing the bounds…")
    _init_state()
    if controls_first:
        _sidebar()
        with table_slot.container():
            _table(common.table((), (), ss["bands_view"]), ss["bands_view"])  # header only
        _view_controls(controls)
    specs, user, warnings = _specs()
    try:
        if specs:
            _results(specs, user, chart_slot, table_slot, first)
            ss["_bands_drawn"] = True
        else:
            chart_slot.info("Choose at least one divergence or fixed-clipping scheme in the sidebar.")
            table_slot.empty()
    finally:
        # Even when the results fail, so that the controls stay on the page.
        if not controls_first:
            _sidebar()
            _view_controls(controls)
        # The URL last: the browser handles it (history entry) after the results.
        _save_state()
    for message in warnings:
        controls.warning(f"Skipped divergence {common.plain(message)}")


def main() -> None:
    st.set_page_config(page_title="bandtheory", page_icon=":material/show_chart:", layout="wide")
    pages = [
        st.Page(bands_page, title="Bands", icon=":material/show_chart:", default=True),
        st.Page(str(_APP_DIR / "pages" / "1_Surrogate.py"), title="Surrogate", url_path="surrogate", icon=":material/functions:"),
        st.Page(str(_APP_DIR / "pages" / "2_Region.py"), title="Region", url_path="region", icon=":material/grid_on:"),
        st.Page(str(_APP_DIR / "pages" / "3_Divergence_lab.py"), title="Divergence lab", url_path="lab", icon=":material/science:"),
        st.Page(str(_APP_DIR / "pages" / "4_Simulation.py"), title="Simulation", url_path="simulation", icon=":material/casino:"),
    ]
    common.pause_collector_for_import()
    try:
        st.navigation(pages).run()
    finally:
        # After the page's elements have been sent (see _common.settle_heap).
        common.settle_heap()


def warm_up() -> float:
    """Compute a new visitor's default view into the caches; returns the seconds taken.

    Imports the library and fills the caches of the Bands page's default table and chart
    (the same calls, with the same arguments, as :func:`_results` on a fresh session),
    then settles the heap (:func:`_common.settle_heap`). Run by the server before it
    serves (:data:`app`), so that its first visitor does not wait for the imports and
    the first computation (sympy's derivations behind every built-in divergence).
    """
    global common
    import _common as common

    start = time.perf_counter()
    common.pause_collector_for_import()
    try:
        values = {key: default for key, _, default, _, _ in _state()}
        specs, _ = _specs_of(values, ())
        log_x, n, view, log_y = _view_of(values)
        common.table(specs, (), view)
        common.bands_figure(specs, (), log_x, n, view, log_y)
    finally:
        common.settle_heap()
    return time.perf_counter() - start


@contextlib.asynccontextmanager
async def _warm_lifespan(_app):
    """Startup of the server (``st.App``): :func:`warm_up` before the first request.

    A failure is reported and the server starts anyway: the page then computes on
    demand, as without the warm-up.
    """
    try:
        seconds = warm_up()
    except Exception as exc:  # the app must start regardless; the page shows real errors
        print(f"bandtheory app: warm-up failed ({type(exc).__name__}: {exc}); serving without it",
              file=sys.stderr, flush=True)
    else:
        print(f"bandtheory app: default view computed in {seconds:.2f} s before serving",
              file=sys.stderr, flush=True)
    yield


if __name__ == "__main__":
    # Streamlit runs this file as the app's script (``__main__``) for every session.
    main()
elif hasattr(st, "App"):
    # ``streamlit run app/streamlit_app.py`` finds this ASGI app (it parses the file, it
    # does not run it), imports this file as a module and serves it with uvicorn: the
    # same app, whose script is this file, with :func:`warm_up` before serving.
    app = st.App(__file__, lifespan=_warm_lifespan)
