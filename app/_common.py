"""Shared app helpers: cached library calls, scheme building, charts with downloads.

No maths here: every number comes from :mod:`bandtheory` (the registry, the schemes and
the data builders of :mod:`bandtheory.plotting.interactive`); this module only caches
those calls and renders their results.

Importing this module costs only streamlit: bandtheory (and with it sympy), pandas and
plotly are imported inside the helpers that use them, so a page can show its first
elements (and the browser start loading their code) while the server imports them.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import io
import os
import shutil
import sys
import threading
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import streamlit as st

if TYPE_CHECKING:
    import pandas as pd

    from bandtheory import divergences

#: session_state key of the user divergences typed on the Lab page:
#: ``{name: (expression, normalize)}``.
USER_KEY = "user_divergences"

#: Chromium used by kaleido for PNG/SVG export (Debian's package).
CHROMIUM = "/usr/bin/chromium"

#: Default radius and epsilons (the paper's headline settings, THEORY.md section 4).
DEFAULTS = {"delta": 0.05, "eps": 0.2, "eps_low": 0.2, "eps_high": 0.28}


# --------------------------------------------------------------------------------------
# Optional library modules (written by other parts of the project)
# --------------------------------------------------------------------------------------


def optional_module(name: str, what: str) -> ModuleType | None:
    """Import ``name`` or show an ``st.info`` saying which feature needs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        st.info(f"{what} needs `{name}`, which is not available in this installation ({exc}).")
        return None


def library_imported() -> bool:
    """Whether this server has imported the library's plotting layer (and so numpy,
    pandas, plotly and sympy): a page's computation then takes milliseconds, not seconds."""
    return "bandtheory.plotting.interactive" in sys.modules


#: Modules imported since the last :func:`settle_heap` that make it freeze again.
FREEZE_AFTER_NEW_MODULES = 25

_heap_lock = threading.Lock()
_heap = {"modules": 0, "freezes": 0}


def serving() -> bool:
    """Whether this process is a Streamlit server (``streamlit run`` or ``st.App``), not
    a test harness (``AppTest``) whose process must keep Python's default collector."""
    from streamlit import config

    return getattr(config, "_server_mode", None) is not None


def pause_collector_for_import() -> None:
    """Switch the cyclic garbage collector off while the library is not imported yet.

    Called at the start of every run. Importing bandtheory (sympy, pandas, plotly) on a
    fresh server's first run otherwise triggers 3-4 full collections (60-90 ms each on
    this machine) that walk the modules being imported. :func:`settle_heap` at the
    end of the run collects, freezes and switches the collector back on.
    """
    if serving() and not library_imported():
        gc.disable()


def settle_heap() -> bool:
    """Take the long-lived heap out of the cyclic garbage collector's full passes.

    Called at the end of every run of every page. The server holds ~200,000
    long-lived objects once bandtheory, sympy, pandas and plotly are imported (modules,
    sympy's caches, plotly's validators), and each run allocates enough containers for
    Python to start a full (generation 2) collection every run or two, which walks all
    of them: 70-170 ms on this machine, in the script's thread or the server's event
    loop, i.e. in the middle of a rerun whose budget is 300 ms. After a full collection
    of the garbage there is now, :func:`gc.freeze` moves every surviving object to the
    permanent generation, which later passes skip (they still see everything allocated
    afterwards, and reference counting still frees frozen objects).

    It acts only when at least :data:`FREEZE_AFTER_NEW_MODULES` modules have been
    imported since the last freeze (the first run of a page that imports more of the
    library), so it runs a handful of times per server process, after the page's
    elements have been sent. The price: a reference cycle among frozen objects that
    becomes garbage later is not reclaimed (a few sessions' worth of state at most).

    Only in a Streamlit server (:func:`serving`); in ``AppTest`` it does nothing.

    Returns:
        Whether the heap was frozen now.
    """
    with _heap_lock:
        try:
            modules = len(sys.modules)
            if not serving() or modules - _heap["modules"] < FREEZE_AFTER_NEW_MODULES:
                return False
            start = time.perf_counter()
            gc.collect()
            gc.freeze()
            _heap["modules"] = modules
            _heap["freezes"] += 1
            print(f"bandtheory app: heap frozen ({modules} modules, {gc.get_freeze_count()} objects, "
                  f"collection {1e3 * (time.perf_counter() - start):.0f} ms)", file=sys.stderr, flush=True)
            return True
        finally:
            gc.enable()


# --------------------------------------------------------------------------------------
# Divergences: built-ins, alpha(a) and the session's user divergences
# --------------------------------------------------------------------------------------


def user_divergences() -> dict[str, tuple[str, bool]]:
    """The session's user divergences, ``{name: (expression, normalize)}`` (Lab page)."""
    return dict(st.session_state.get(USER_KEY, {}))


def user_items() -> tuple[tuple[str, str, bool], ...]:
    """The session's user divergences as a hashable, sorted tuple (for cache keys)."""
    return tuple(sorted((name, text, bool(norm)) for name, (text, norm) in user_divergences().items()))


def add_user_divergence(name: str, expression: str, *, normalize: bool = False) -> None:
    """Remember a checked user divergence for this session (offered on the Bands page)."""
    current = user_divergences()
    current[name] = (expression, bool(normalize))
    st.session_state[USER_KEY] = current


@st.cache_resource(max_entries=64, show_spinner=False)
def parse_user(expression: str, name: str | None = None, normalize: bool = False) -> divergences.Divergence:
    """:func:`bandtheory.divergences.from_expression`, cached per (text, name, normalize).

    Raises:
        ValueError: The parser's or checker's refusal (nothing in the text is executed).
    """
    from bandtheory import divergences

    from_expression = getattr(divergences, "from_expression", None)
    if from_expression is None:
        raise ValueError("user divergences need bandtheory.divergences.from_expression (not installed)")
    return from_expression(expression, name=name, normalize=normalize)


def resolve(name: str, user: Sequence[tuple[str, str, bool]] = ()) -> divergences.Divergence:
    """A divergence by name: a built-in, ``alpha(a)``, or one of ``user`` (see :func:`user_items`)."""
    from bandtheory import divergences

    for user_name, expression, normalize in user:
        if user_name == name:
            return parse_user(expression, user_name, normalize)
    return divergences.get(name)


def divergence_options() -> list[str]:
    """Names offered by the app: every built-in, then the session's user divergences."""
    from bandtheory import divergences

    builtins = list(divergences.names())
    return builtins + [n for n in user_divergences() if n not in builtins]


# --------------------------------------------------------------------------------------
# Schemes from plain (hashable) specifications
# --------------------------------------------------------------------------------------


def build_scheme(spec: tuple, user: Sequence[tuple[str, str, bool]] = ()) -> Any:
    """A :mod:`bandtheory.schemes` object from a hashable spec.

    Specs: ``("band", name, delta, relax, cap)`` with ``relax`` ``None`` or
    ``(eps_low, eps_high)`` and ``cap`` ``None`` or ``upper_max``; ``("clip", eps)``;
    ``("clip_higher", eps_low, eps_high)``; ``("dcpo", eps_low, eps_high)``.
    """
    from bandtheory import schemes

    kind = spec[0]
    if kind == "band":
        _, name, delta, relax, cap = spec
        scheme = schemes.band(resolve(name, user), delta=delta)
        if relax is not None:
            scheme = schemes.relax(scheme, eps_low=relax[0], eps_high=relax[1])
        if cap is not None:
            scheme = schemes.cap(scheme, upper_max=cap)
        return scheme
    if kind == "clip":
        return schemes.clip(eps=spec[1])
    if kind == "clip_higher":
        return schemes.clip_higher(eps_low=spec[1], eps_high=spec[2])
    if kind == "dcpo":
        return schemes.dcpo(eps_low=spec[1], eps_high=spec[2])
    raise ValueError(f"unknown scheme kind {kind!r}; choose one of band, clip, clip_higher, dcpo")


@st.cache_data(max_entries=256, show_spinner=False)
def curves(specs: tuple, user: tuple, log_x: bool, n: int) -> pd.DataFrame:
    """Cached bound frame over the app's p grid: log-spaced from 1e-8, or linear.

    Both grids stop short of ``p = 1`` (a single point) and the linear one short of
    ``p = 0`` (where ``1/p`` is infinite).
    """
    from bandtheory.plotting import data as pdata
    from bandtheory.plotting import interactive as ip

    built = [build_scheme(spec, user) for spec in specs]
    grid = (pdata.p_grid(n=n, p_min=1e-8, p_max=1.0 - 1e-6, log=True) if log_x
            else pdata.p_grid(n=n, p_min=1e-3, p_max=1.0 - 1e-3))
    return ip.curves_frame(built, grid)


@st.cache_resource(max_entries=64, show_spinner=False)
def bands_figure(specs: tuple, user: tuple, log_x: bool, n: int, view: str, log_y: bool) -> Any:
    """Cached :func:`bandtheory.plotting.interactive.bands_figure` of :func:`curves`.

    One figure object per widget state, shared by the sessions: it is only read
    (rendered and exported), never modified.
    """
    from bandtheory.plotting import interactive as ip

    return ip.bands_figure(curves(specs, user, log_x, n), view=view, log_x=log_x, log_y=log_y)


@st.cache_data(max_entries=256, show_spinner=False)
def table(specs: tuple, user: tuple, view: str) -> pd.DataFrame:
    """Cached :func:`bandtheory.plotting.interactive.bounds_table` at :data:`TABLE_P`."""
    from bandtheory.plotting import interactive as ip

    built = [build_scheme(spec, user) for spec in specs]
    return ip.bounds_table(built, ip.TABLE_P, view=view)


# --------------------------------------------------------------------------------------
# Charts with PNG / SVG / HTML / CSV downloads
# --------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def kaleido_status() -> tuple[bool, str]:
    """Whether kaleido can render static images here, and why not when it cannot.

    Cheap check (no browser start, no import: it runs on the first page load): kaleido
    installed and a Chromium found. A kaleido that fails later is reported by the button.
    """
    if importlib.util.find_spec("kaleido") is None:
        return False, "kaleido is not installed"
    if os.environ.get("BROWSER_PATH"):
        path = os.environ["BROWSER_PATH"]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return False, f"BROWSER_PATH={path} is not an executable"
        return True, path
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return True, CHROMIUM
    found = shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chrome")
    if found:
        return True, found
    return False, f"no Chromium found for kaleido (install Debian's chromium at {CHROMIUM})"


def _image_bytes(fig: Any, fmt: str) -> Callable[[], bytes]:
    ok, browser = kaleido_status()

    def render() -> bytes:
        if ok and browser and "BROWSER_PATH" not in os.environ:
            # kaleido finds its Chromium through this variable.
            os.environ["BROWSER_PATH"] = browser
        try:
            return fig.to_image(format=fmt, width=1100, height=int(fig.layout.height or 520),
                                scale=2 if fmt == "png" else 1)
        except Exception as exc:  # kaleido/Chromium failures vary; report them in one line
            raise RuntimeError(f"kaleido could not render {fmt.upper()} with {browser}: "
                               f"{type(exc).__name__}: {exc}") from exc

    return render


def _html_bytes(fig: Any) -> bytes:
    buffer = io.StringIO()
    fig.write_html(buffer, include_plotlyjs=True, full_html=True)  # works offline
    return buffer.getvalue().encode()


def chart_placeholder(slot: Any, *, height: int, text: str) -> None:
    """An empty chart of the given height showing ``text``, in ``slot`` (an ``st.empty``).

    Shown before a page's first computation, to be replaced by the real chart: the
    browser then loads and compiles its plotly code (several MB) while the server
    imports the library and computes, instead of afterwards.
    """
    import plotly.graph_objects as go

    fig = go.Figure(layout=dict(
        height=height, template={}, xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=text, showarrow=False, font=dict(size=14, color="#888888"))],
    ))
    slot.plotly_chart(fig, config={"displaylogo": False, "staticPlot": True}, theme=None)


def chart(fig: Any, data: pd.DataFrame | Callable[[], pd.DataFrame] | None, *, stem: str, key: str) -> None:
    """Render a plotly figure with PNG, SVG (or HTML) and CSV download buttons.

    Images are rendered only when a button is clicked (deferred), so widget changes
    stay fast. When kaleido cannot run, the image buttons are disabled with the reason
    and an HTML download is offered instead. ``data`` (the CSV) may be a frame or a
    function returning one, called only when the CSV button is clicked.

    The chart keeps the figure's own template (``theme=None``), the library's style that
    the PNG/SVG downloads show too; Streamlit's theme would restyle it in the browser on
    every redraw (and turn on automatic axis margins, an extra layout pass).
    """
    st.plotly_chart(fig, key=f"{key}_chart", config={"displaylogo": False}, theme=None)
    ok, reason = kaleido_status()
    cols = st.columns(4)
    if ok:
        cols[0].download_button("PNG", _image_bytes(fig, "png"), file_name=f"{stem}.png",
                                mime="image/png", key=f"{key}_png", on_click="ignore")
        cols[1].download_button("SVG", _image_bytes(fig, "svg"), file_name=f"{stem}.svg",
                                mime="image/svg+xml", key=f"{key}_svg", on_click="ignore")
    else:
        cols[0].button("PNG/SVG unavailable", disabled=True, key=f"{key}_noimg",
                       help=f"kaleido cannot render here: {reason}. Download HTML instead.")
        cols[1].download_button("HTML", lambda: _html_bytes(fig), file_name=f"{stem}.html",
                                mime="text/html", key=f"{key}_html", on_click="ignore",
                                help=f"PNG/SVG unavailable: {reason}")
    if data is not None:
        frame = data if callable(data) else (lambda: data)
        cols[2].download_button("CSV (data)", lambda: frame().to_csv(index=False).encode(),
                                file_name=f"{stem}.csv", mime="text/csv", key=f"{key}_csv",
                                on_click="ignore")


#: Style of :func:`html_table`: Streamlit's table look (thin rules, muted headers), with
#: right-aligned tabular figures so that the digits of a column line up.
_TABLE_CSS = (
    "<style>"
    ".bt-table{border-collapse:collapse;width:100%;font-size:0.875rem;"
    "font-variant-numeric:tabular-nums;margin-bottom:0.5rem}"
    ".bt-table th,.bt-table td{border:1px solid rgba(128,128,128,0.25);"
    "padding:0.25rem 0.5rem;white-space:nowrap}"
    ".bt-table td{text-align:right}"
    ".bt-table th{font-weight:400;opacity:0.75}"
    ".bt-table thead th{text-align:right}"
    ".bt-table tbody th{text-align:left}"
    "</style>"
)


def html_table(frame: pd.DataFrame) -> str:
    """A frame of display strings as one escaped HTML ``<table>`` (for ``st.html``).

    ``st.table`` renders every cell through Streamlit's Markdown component (and loads
    the Arrow decoder): about 180 Markdown renders for the Bands page's table, which the
    browser redoes at each rerun before it draws the chart. The values are shown
    exactly as given; pandas escapes them.
    """
    return _TABLE_CSS + frame.to_html(classes="bt-table", border=0, escape=True)


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|<>$~:")


def plain(text: str) -> str:
    """Escape Markdown (and LaTeX ``$``) so a message is shown exactly as written."""
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in str(text))


def format_number(value: float) -> str:
    """Displayed form of a bound: 8 significant digits (inf as ``∞``)."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "∞" if value > 0 else "−∞"
    return f"{value:.8g}"
