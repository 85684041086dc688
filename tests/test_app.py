"""The Streamlit app, page by page, through ``streamlit.testing.v1.AppTest``.

Every page runs without exception, reacts to its widgets, shows its chart and table,
and the numbers it shows equal independent truth: closed forms of THEORY.md section 3
(TV ``1 +/- delta/p``, Pearson chi2 ``1 +/- sqrt(delta (1-p)/p)``) and the library.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bandtheory import band_bounds, divergences

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = streamlit_testing.AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app" / "streamlit_app.py")
TABLE_P = (1e-4, 0.01, 0.08, 0.2, 0.5, 0.9, 0.99)
TIMEOUT = 120


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at


def _page(path: str, session: dict | None = None) -> AppTest:
    at = _app()
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page(path)
    return at.run()


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


class _HtmlTable(HTMLParser):
    """The rows of the ``<table>`` in an HTML text, as lists of cell texts (unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _bands_tables(at: AppTest) -> list[pd.DataFrame]:
    """The Bands page's tables of bounds (HTML elements holding a table), as frames of
    the texts shown: index = first column, columns = the header row."""
    frames = []
    for element in at.get("html"):
        body = element.proto.body
        if "<table" not in body:
            continue
        parser = _HtmlTable()
        parser.feed(body)
        header, *rows = parser.rows
        assert all(len(row) == len(header) for row in rows), parser.rows
        frames.append(pd.DataFrame([row[1:] for row in rows], index=[row[0] for row in rows],
                                   columns=header[1:]))
    return frames


def _cell(at: AppTest, row: str, p: float, table: int = 0) -> float:
    frame = _bands_tables(at)[table]
    text = str(frame.loc[row, f"p={p:g}"])
    return {"∞": math.inf, "−∞": -math.inf}.get(text, None) or float(text)


def _tv_upper(p, delta):
    return min(1.0 + delta / p, 1.0 / p)


def _chi2_upper(p, delta):
    return min(1.0 + math.sqrt(delta * (1.0 - p) / p), 1.0 / p)


def _chi2_lower(p, delta):
    return max(1.0 - math.sqrt(delta * (1.0 - p) / p), 0.0)


# --------------------------------------------------------------------------------------
# Bands page
# --------------------------------------------------------------------------------------


def test_bands_default_view_matches_closed_forms():
    at = _app().run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 1
    assert len(_bands_tables(at)) == 1
    labels = {str(b.proto.label) for b in at.get("download_button")}
    assert {"PNG", "SVG", "CSV (data)"} <= labels or {"HTML", "CSV (data)"} <= labels
    for p in TABLE_P:
        # 8 significant digits are shown.
        assert _cell(at, "Band tv δ=0.05 · upper", p) == pytest.approx(_tv_upper(p, 0.05), rel=1e-7)
        assert _cell(at, "Band chi2 δ=0.05 · upper", p) == pytest.approx(_chi2_upper(p, 0.05), rel=1e-7)
        assert _cell(at, "Band chi2 δ=0.05 · lower", p) == pytest.approx(_chi2_lower(p, 0.05), rel=1e-7, abs=1e-12)
        kl = band_bounds(math.log(p), "kl", delta=0.05)
        assert _cell(at, "Band kl δ=0.05 · upper", p) == pytest.approx(float(kl.upper), rel=1e-7)
        assert _cell(at, "clip ε=0.2 · upper", p) == pytest.approx(1.2)
    # The KL upper bound solves g(p, r) = delta (its defining equation).
    r = _cell(at, "Band kl δ=0.05 · upper", 0.2)
    g = 0.2 * (-math.log(r) + r - 1) + 0.8 * (-math.log((1 - 0.2 * r) / 0.8) + (1 - 0.2 * r) / 0.8 - 1)
    assert g == pytest.approx(0.05, rel=1e-6)


def test_bands_delta_and_views_update_the_table_and_the_url():
    at = _app().run()
    at.select_slider(key="bands_delta").set_value(0.1).run()
    _no_exception(at)
    assert _cell(at, "Band tv δ=0.1 · upper", 0.5) == pytest.approx(1.2)
    assert at.query_params["delta"] == ["0.1"] or at.query_params["delta"] == "0.1"
    # Probability variation p (r - 1): for TV it is exactly delta where unsaturated.
    at.radio(key="bands_view").set_value("variation").run()
    _no_exception(at)
    assert _cell(at, "Band tv δ=0.1 · upper", 0.5) == pytest.approx(0.1)
    assert _cell(at, "Band tv δ=0.1 · lower", 0.5) == pytest.approx(-0.1)
    assert _cell(at, "clip ε=0.2 · upper", 0.08) == pytest.approx(0.2 * 0.08)
    # New-probability bounds p r: saturated TV upper at p = 0.99 is the simplex limit 1.
    at.radio(key="bands_view").set_value("new_prob").run()
    _no_exception(at)
    assert _cell(at, "Band tv δ=0.1 · upper", 0.99) == pytest.approx(1.0)
    assert _cell(at, "Band chi2 δ=0.1 · upper", 0.2) == pytest.approx(0.2 * _chi2_upper(0.2, 0.1), rel=1e-7)


def test_bands_state_is_restored_from_the_url():
    at = _app(div="hellinger,alpha(1/2)", delta="0.2", view="ratio", eps="0.3", ch="0", x="log").run()
    _no_exception(at)
    assert at.select_slider(key="bands_delta").value == 0.2
    assert at.multiselect(key="bands_divs").value == ["hellinger", "alpha(1/2)"]
    rows = list(_bands_tables(at)[0].index)
    assert "clip ε=0.3 · upper" in rows and not any("Clip-Higher" in r for r in rows)
    # alpha(1/2) is twice the squared Hellinger: same Band at delta and 2 delta.
    h = band_bounds(math.log(0.2), "hellinger", delta=0.1)
    assert _cell(at, "Band alpha(1/2) δ=0.2 · upper", 0.2) == pytest.approx(float(h.upper), rel=1e-7)


def test_bands_bad_url_values_fall_back_to_defaults():
    at = _app(delta="nan", eps="7", view="nope", n="3", div="kll").run()
    _no_exception(at)
    assert at.select_slider(key="bands_delta").value == 0.05
    assert at.slider(key="bands_eps").value == 0.2
    assert at.radio(key="bands_view").value == "ratio"
    assert any("kll" in w.value.replace("\\", "") for w in at.warning)


@pytest.mark.slow
def test_bands_widget_extremes_never_raise():
    at = _app().run()
    everything = list(divergences.names()) + ["alpha(2)", "alpha(-1)", "alpha(1)"]
    at.multiselect(key="bands_divs").set_value(everything).run()
    _no_exception(at)
    assert any("alpha(1)" in w.value.replace("\\", "") for w in at.warning)  # a = 1 is refused, shown
    for delta in (0.001, 1.0):
        at.select_slider(key="bands_delta").set_value(delta).run()
        _no_exception(at)
    at.slider(key="bands_eps").set_value(1.0).run()
    at.slider(key="bands_eps_low").set_value(1.0).run()
    at.slider(key="bands_eps_high").set_value(3.0).run()
    at.checkbox(key="bands_dcpo").check().run()
    at.slider(key="bands_dcpo_low").set_value(2.0).run()
    at.slider(key="bands_dcpo_high").set_value(0.0).run()
    at.checkbox(key="bands_relax").check().run()
    at.checkbox(key="bands_cap").check().run()
    at.number_input(key="bands_cap_max").set_value(1.0).run()
    _no_exception(at)
    # Capped at 1 and relaxed to at least 1 + eps_high = 4: relax is applied first.
    assert _cell(at, "Band kl δ=1 ∪ [1-1, 1+3], upper ≤ 1 · upper", 0.5) == pytest.approx(1.0)
    for view in ("ratio", "variation", "new_prob"):
        for axis in ("linear", "log"):
            at.radio(key="bands_view").set_value(view).run()
            at.radio(key="bands_x").set_value(axis).run()
            if not at.checkbox(key="bands_logy").disabled:
                at.checkbox(key="bands_logy").check().run()
            _no_exception(at)
    at.slider(key="bands_n").set_value(50).run()
    at.multiselect(key="bands_divs").set_value([]).run()
    at.checkbox(key="bands_clip").uncheck().run()
    at.checkbox(key="bands_ch").uncheck().run()
    at.checkbox(key="bands_dcpo").uncheck().run()
    _no_exception(at)
    assert any("Choose at least one" in i.value for i in at.info)


def test_bands_offers_the_sessions_user_divergences():
    pytest.importorskip("bandtheory.parsing")
    at = _app()
    at.session_state["user_divergences"] = {"pearson_again": ("(u - 1)**2", False)}
    at.run()
    assert "pearson_again" in at.multiselect(key="bands_divs").options
    at.multiselect(key="bands_divs").set_value(["pearson_again"]).run()
    _no_exception(at)
    for p in (0.01, 0.5):
        assert _cell(at, "Band pearson_again δ=0.05 · upper", p) == pytest.approx(_chi2_upper(p, 0.05), rel=1e-7)


def test_charts_fall_back_to_html_when_kaleido_cannot_run(monkeypatch):
    _common = _common_module()
    monkeypatch.setattr(_common, "kaleido_status", lambda: (False, "no Chromium found for kaleido"))
    at = _app().run()
    _no_exception(at)
    labels = [str(b.proto.label) for b in at.get("download_button")]
    assert "HTML" in labels and "PNG" not in labels
    disabled = [b for b in at.button if "unavailable" in b.label]
    assert disabled and disabled[0].disabled and "no Chromium" in disabled[0].help


@pytest.mark.slow
def test_png_and_svg_export_with_kaleido():
    if not os.path.exists("/usr/bin/chromium") and not os.environ.get("BROWSER_PATH"):
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("PNG/SVG export must be tested in CI: /usr/bin/chromium is missing")
        pytest.skip("no chromium for kaleido")
    sys.path.insert(0, str(ROOT / "app"))
    try:
        import _common
    finally:
        sys.path.remove(str(ROOT / "app"))
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0.1, 0.5], y=[1.2, 1.3]))
    ok, why = _common.kaleido_status()
    assert ok, why
    png = _common._image_bytes(fig, "png")()
    svg = _common._image_bytes(fig, "svg")()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg[:500]


def _common_module():
    sys.path.insert(0, str(ROOT / "app"))
    try:
        import _common
    finally:
        sys.path.remove(str(ROOT / "app"))
    return _common


def _chart_trace_names(at: AppTest) -> list[str]:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return [trace.get("name") for trace in json.loads(charts[0].proto.spec)["data"]]


def test_bands_first_run_and_reruns_show_one_real_chart_and_one_table():
    # The first run shows stand-ins while it computes; what remains is the real chart.
    at = _app().run()
    _no_exception(at)
    n_schemes = len(divergences.names()) + 2  # every built-in, clip, Clip-Higher
    names = _chart_trace_names(at)
    assert len(names) == 2 * n_schemes + 2  # upper and lower of each, the simplex limits
    assert names.count("Band kl (δ=0.05)") == 2 and names.count("simplex limits") == 2
    assert len(_bands_tables(at)) == 1 and len(_bands_tables(at)[0]) == 2 * n_schemes
    for delta in (0.1, 0.07, 0.1):
        at.select_slider(key="bands_delta").set_value(delta).run()
        _no_exception(at)
        assert f"Band kl (δ={delta:g})" in _chart_trace_names(at)
        assert len(_bands_tables(at)) == 1 and len(_bands_tables(at)[0]) == 2 * n_schemes
    # On reruns the controls are sent after the results; they are all still there.
    assert at.select_slider(key="bands_delta").value == 0.1
    assert at.multiselect(key="bands_divs").value == list(divergences.names())
    assert len(at.sidebar.slider) == 6 and len(at.radio) == 2


@pytest.mark.parametrize("imported", [False, True])
def test_bands_first_run_shows_results_and_controls(monkeypatch, imported):
    # While the server still imports the library (not imported), the first run sends
    # the stand-ins and the controls before it computes; the stand-ins are then replaced
    # by the results. Once it is imported, the results are sent first, then the controls.
    common = _common_module()
    monkeypatch.setattr(common, "library_imported", lambda: imported)
    at = _app().run()
    _no_exception(at)
    n_schemes = len(divergences.names()) + 2
    assert "Band kl (δ=0.05)" in _chart_trace_names(at)
    tables = _bands_tables(at)
    assert len(tables) == 1 and len(tables[0]) == 2 * n_schemes
    assert _cell(at, "Band tv δ=0.05 · upper", 0.5) == pytest.approx(_tv_upper(0.5, 0.05))
    assert len(at.sidebar.slider) == 6 and len(at.radio) == 2
    monkeypatch.undo()
    at.select_slider(key="bands_delta").set_value(0.1).run()
    _no_exception(at)
    assert _cell(at, "Band tv δ=0.1 · upper", 0.5) == pytest.approx(1.2)
    assert len(_bands_tables(at)) == 1 and len(at.sidebar.slider) == 6 and len(at.radio) == 2


@pytest.fixture
def heap():
    """The app's heap bookkeeping, restored afterwards (and the collector as it was)."""
    common = _common_module()
    saved, frozen_before, enabled = dict(common._heap), gc.get_freeze_count(), gc.isenabled()
    yield common
    gc.unfreeze()
    if frozen_before:  # pragma: no cover - nobody else freezes in the test process
        gc.freeze()
    common._heap.clear()
    common._heap.update(saved)
    (gc.enable if enabled else gc.disable)()


def test_heap_is_frozen_after_the_first_run_of_a_server(monkeypatch, heap):
    # In a server, the run that imported the library ends with a full collection and a
    # freeze (the collector is switched back on); the next runs import nothing new and
    # leave the heap as it is.
    monkeypatch.setattr(heap, "serving", lambda: True)
    heap._heap["modules"] = 0
    assert gc.get_freeze_count() == 0
    at = _app().run()
    _no_exception(at)
    assert heap._heap["freezes"] == 1 and gc.get_freeze_count() > 100_000 and gc.isenabled()
    at.select_slider(key="bands_delta").set_value(0.1).run()
    _no_exception(at)
    assert heap._heap["freezes"] == 1 and gc.isenabled()
    assert not heap.settle_heap()


def test_collector_is_paused_only_while_a_server_imports_the_library(monkeypatch, heap):
    monkeypatch.setattr(heap, "serving", lambda: True)
    monkeypatch.setattr(heap, "library_imported", lambda: False)
    heap.pause_collector_for_import()
    assert not gc.isenabled()
    heap._heap["modules"] = len(sys.modules)  # nothing new imported: no freeze
    assert not heap.settle_heap()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    monkeypatch.setattr(heap, "library_imported", lambda: True)
    heap.pause_collector_for_import()
    assert gc.isenabled()


def test_heap_is_left_alone_outside_a_server(heap):
    # AppTest (and any other host that is not a Streamlit server) keeps Python's default.
    assert not heap.serving()
    heap._heap["modules"] = 0
    at = _app().run()
    _no_exception(at)
    assert gc.isenabled() and gc.get_freeze_count() == 0 and heap._heap["freezes"] == 0
    assert not heap.settle_heap()


def _app_module(monkeypatch):
    """app/streamlit_app.py imported as a module, as uvicorn imports it (``st.App`` faked:
    the real one would pin this process's Streamlit configuration)."""
    import importlib.util

    import streamlit as st

    made = []
    monkeypatch.setattr(st, "App", lambda *args, **kwargs: made.append((args, kwargs)) or "the app",
                        raising=False)
    spec = importlib.util.spec_from_file_location("bandtheory_app_module", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, made


def test_streamlit_run_serves_the_app_with_a_warm_up():
    # `streamlit run app/streamlit_app.py` parses the file, finds the st.App and serves it.
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(Path(APP))
    assert found.is_asgi_app and found.import_string == "streamlit_app:app"


def test_warm_up_fills_the_caches_of_a_new_visitors_first_run(monkeypatch):
    import streamlit as st

    from bandtheory.plotting import interactive

    module, made = _app_module(monkeypatch)
    ((args, kwargs),) = made
    assert args == (APP,) and kwargs["lifespan"] is module._warm_lifespan and module.app == "the app"
    st.cache_data.clear()
    st.cache_resource.clear()
    assert module.warm_up() > 0
    # The first run of a new session computes nothing: every result is in the caches.
    for name in ("curves_frame", "bounds_table", "bands_figure"):
        monkeypatch.setattr(interactive, name, lambda *a, **k: pytest.fail("computed again after the warm-up"))
    at = _app().run()
    _no_exception(at)
    assert "Band kl (δ=0.05)" in _chart_trace_names(at)
    assert _cell(at, "Band tv δ=0.05 · upper", 0.5) == pytest.approx(_tv_upper(0.5, 0.05))


def test_a_failed_warm_up_is_reported_and_the_server_starts(monkeypatch, capsys):
    import asyncio

    module, _ = _app_module(monkeypatch)

    def fail():
        raise RuntimeError("no numbers today")

    monkeypatch.setattr(module, "warm_up", fail)
    entered = []

    async def serve():
        async with module._warm_lifespan(None):
            entered.append(True)

    asyncio.run(serve())
    assert entered == [True]
    assert "warm-up failed (RuntimeError: no numbers today); serving without it" in capsys.readouterr().err


def test_bands_table_is_escaped_html_of_the_shown_values():
    common = _common_module()
    frame = pd.DataFrame({"p=0.5": ["<b>1</b>", "∞"]}, index=["a & b · upper", "x"])
    html = common.html_table(frame)
    assert "<b>1</b>" not in html and "&lt;b&gt;1&lt;/b&gt;" in html and "a &amp; b" in html
    parser = _HtmlTable()
    parser.feed(html)
    assert parser.rows == [["", "p=0.5"], ["a & b · upper", "<b>1</b>"], ["x", "∞"]]


def test_bands_controls_stay_when_the_results_fail(monkeypatch):
    common = _common_module()
    at = _app().run()

    def broken(*args, **kwargs):
        raise RuntimeError("table broken on purpose")

    monkeypatch.setattr(common, "table", broken)
    at.select_slider(key="bands_delta").set_value(0.1).run()
    assert at.exception and "table broken on purpose" in at.exception[0].value
    assert at.select_slider(key="bands_delta").value == 0.1
    assert at.multiselect(key="bands_divs").value == list(divergences.names())
    assert len(at.radio) == 2


def test_app_helpers_and_the_package_import_lightly():
    # The first page load waits for these imports: the app's helpers import only
    # streamlit, and ``import bandtheory`` leaves symbolic and losses for first use.
    code = "\n".join([
        "import sys",
        "sys.path.insert(0, 'app')",
        "import _common",
        "heavy = [m for m in ('bandtheory', 'numpy', 'pandas', 'sympy') if m in sys.modules]",
        "assert not heavy, heavy",
        "import bandtheory",
        "lazy = [m for m in ('bandtheory.symbolic', 'bandtheory.losses', 'bandtheory.parsing') if m in sys.modules]",
        "assert not lazy, lazy",
        "from bandtheory import policy_loss, symbolic",
        "import bandtheory.losses",
        "assert policy_loss is bandtheory.losses.policy_loss",
        "assert symbolic is sys.modules['bandtheory.symbolic'] is bandtheory.symbolic",
        "assert set(bandtheory.__all__) <= set(dir(bandtheory))",
    ])
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _figure_schemes():
    from bandtheory import schemes

    return [schemes.band(name, delta=0.05) for name in divergences.names()] + [
        schemes.clip(eps=0.2),
        schemes.relax(schemes.band("kl", delta=0.1), eps_low=0.2, eps_high=0.28),
    ]


@pytest.mark.parametrize("view", ["ratio", "variation", "new_prob"])
@pytest.mark.parametrize("log_x, log_y, title", [(False, False, None), (True, True, "a title")])
def test_bands_figure_is_what_plotly_validation_gives(view, log_x, log_y, title):
    # The figure is assembled without plotly's validators (speed); rebuilt through them
    # it must be the same figure, property for property.
    import plotly.graph_objects as go
    import plotly.io as pio

    from bandtheory.plotting import interactive as ip

    p = np.geomspace(1e-6, 0.999, 60) if log_x else np.linspace(1e-3, 0.999, 60)
    fig = ip.bands_figure(ip.curves_frame(_figure_schemes(), p), view=view, log_x=log_x, log_y=log_y, title=title)
    validated = go.Figure(fig.to_dict())
    assert json.loads(pio.to_json(fig)) == json.loads(pio.to_json(validated))
    # Later edits of the returned figure are validated again.
    with pytest.raises(ValueError):
        fig.update_layout(not_a_layout_property=1)
    with pytest.raises(ValueError):
        fig.data[0].update(line_widht=3)


def test_bands_figure_hover_shows_exact_bounds():
    from bandtheory import schemes
    from bandtheory.plotting import interactive as ip

    p = np.linspace(1e-3, 0.999, 500)
    fig = ip.bands_figure(ip.curves_frame([schemes.band("tv", delta=0.05), schemes.band("chi2", delta=0.05)], p))
    traces = {(t.name, "upper" if "(upper)" in t.hovertemplate else "lower"): t for t in fig.data}
    assert len(traces) == len(fig.data) == 6
    tv_up, chi2_up = traces[("Band tv (δ=0.05)", "upper")], traces[("Band chi2 (δ=0.05)", "upper")]
    np.testing.assert_array_equal(tv_up.x, p)
    np.testing.assert_allclose(tv_up.y, [_tv_upper(x, 0.05) for x in p], rtol=1e-13)
    np.testing.assert_allclose(chi2_up.y, [_chi2_upper(x, 0.05) for x in p], rtol=1e-13)
    np.testing.assert_allclose(traces[("Band chi2 (δ=0.05)", "lower")].y, [_chi2_lower(x, 0.05) for x in p],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(traces[("simplex limits", "upper")].y, 1.0 / p)
    np.testing.assert_array_equal(traces[("simplex limits", "lower")].y, np.zeros_like(p))
    # Hover: p to 6 and the bound to 10 significant digits, from the exact float64 data.
    assert all("p=%{x:.6g}" in t.hovertemplate and "value=%{y:.10g}" in t.hovertemplate for t in fig.data)
    assert all(np.asarray(t.y).dtype == np.float64 for t in fig.data)


def test_empty_bounds_table_keeps_its_columns():
    from bandtheory.plotting import interactive as ip

    table = ip.bounds_table([], TABLE_P)
    assert table.empty and list(table.columns) == [f"p={p:g}" for p in TABLE_P]


# --------------------------------------------------------------------------------------
# Surrogate page
# --------------------------------------------------------------------------------------


def test_surrogate_page_shows_library_bounds_and_reacts():
    at = _page("pages/1_Surrogate.py")
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 1
    table = at.table[0].value
    kl = band_bounds(math.log(0.08), "kl", delta=0.05)
    assert float(table.loc["Band kl δ=0.05", "upper"]) == pytest.approx(float(kl.upper), rel=1e-7)
    assert float(table.loc["Clip-Higher 0.2/0.28", "upper"]) == pytest.approx(1.28)
    at.radio(key="sur_sign").set_value("negative").run()
    _no_exception(at)
    assert any("c·A = -3" in c.value for c in at.caption)
    at.multiselect(key="sur_divs").set_value(["tv", "chi2"]).run()
    at.number_input(key="sur_p").set_value(0.5).run()
    table = at.table[0].value
    assert float(table.loc["Band tv δ=0.05", "upper"]) == pytest.approx(1.1)
    assert float(table.loc["Band chi2 δ=0.05", "lower"]) == pytest.approx(_chi2_lower(0.5, 0.05), rel=1e-7)
    for p in (1.0, 1e-8):
        at.number_input(key="sur_p").set_value(p).run()
        _no_exception(at)
    at.slider(key="sur_size").set_value(0.0).run()
    at.checkbox(key="sur_dual").uncheck().run()
    at.slider(key="sur_rmax").set_value(20.0).run()
    _no_exception(at)


def test_surrogate_curves_equal_the_loss_module():
    losses = pytest.importorskip("bandtheory.losses")
    from bandtheory import schemes
    from bandtheory.plotting import interactive as ip

    rng = np.random.default_rng(0)
    for p in (0.01, 0.3, 0.9):
        # Ratios up to the simplex limit 1/p (the new probability r p is at most 1).
        r = np.sort(rng.uniform(0.01, min(4.0, 1.0 / p), 300))
        for adv in (1.5, -0.7):
            for dual in (None, 3.0):
                scheme = schemes.band("kl", delta=0.1)
                data = ip.surrogate_frame([scheme], p=p, adv=adv, r=r, dual_clip=dual)
                old = np.full(r.shape, math.log(p))
                loss, grad, _ = losses.policy_loss_and_grad(
                    np.log(r * p), old, np.full(r.shape, adv), scheme=scheme, c=dual,
                )
                # token-mean loss: the mean of -objective; gradient wrt log pi is
                # -(1/N) r dL/dr.
                assert -loss == pytest.approx(data["objective"].mean(), rel=1e-12)
                np.testing.assert_allclose(-grad * len(r), r * data["gradient"].to_numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# Region page
# --------------------------------------------------------------------------------------


def test_region_page_shares_match_closed_form_classification():
    at = _page("pages/2_Region.py")
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 2  # heatmap and 3-D surface
    at.selectbox(key="region_div").set_value("tv").run()
    at.selectbox(key="region_other").set_value("clip").run()
    at.slider(key="region_eps").set_value(0.2).run()
    at.slider(key="region_n").set_value(100).run()
    _no_exception(at)
    # Independent classification: Band TV allows |q - p| <= delta, clip allows |q/p - 1| <= eps.
    grid = np.linspace(1e-3, 1.0, 100)
    p, q = np.meshgrid(grid, grid)
    band_ok = np.abs(q - p) <= 0.1 + 1e-12
    clip_ok = np.abs(q / p - 1.0) <= 0.2 + 1e-12
    shares = [np.mean(band_ok & clip_ok), np.mean(band_ok & ~clip_ok),
              np.mean(~band_ok & clip_ok), np.mean(~band_ok & ~clip_ok)]
    shown = [float(m.value.rstrip("%")) / 100 for m in at.metric]
    assert len(shown) == 4
    np.testing.assert_allclose(shown, shares, atol=0.002)
    for delta in (0.001, 1.0):
        at.select_slider(key="region_delta").set_value(delta).run()
        _no_exception(at)
    at.selectbox(key="region_other").set_value("dcpo").run()
    _no_exception(at)


# --------------------------------------------------------------------------------------
# Divergence lab
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("__import__('os').system('touch /tmp/bandtheory_app_test')", "not allowed"),
        ("u.__class__", "not allowed"),
        ("(u - 1)**3", "convex"),
        ("u**2", "f(1)"),
        ("u" * 501, "500"),
    ],
)
def test_lab_refuses_bad_expressions(text, fragment):
    pytest.importorskip("bandtheory.parsing")
    at = _page("pages/3_Divergence_lab.py")
    at.text_input(key="lab_expr").set_value(text).run()
    _no_exception(at)
    errors = [e.value.replace("\\", "") for e in at.error]
    assert errors and errors[0].startswith("Refused") and fragment in errors[0], errors
    assert not os.path.exists("/tmp/bandtheory_app_test")
    assert not at.get("plotly_chart")


@pytest.mark.slow
def test_lab_checks_derives_and_adds_a_divergence():
    pytest.importorskip("bandtheory.symbolic")
    at = _page("pages/3_Divergence_lab.py")
    _no_exception(at)
    at.text_input(key="lab_name").set_value("pearson_copy").run()
    at.text_input(key="lab_expr").set_value("u**2").run()
    assert at.error and "f(1) = 0" in at.error[0].value.replace("\\", "")
    at.text_input(key="lab_expr").set_value("(u - 1)**2").run()
    _no_exception(at)
    assert not at.error
    assert at.success and "pearson_copy" in at.success[0].value.replace("\\", "")
    latex = [str(x.value) for x in at.get("latex")]
    # The derived Pearson upper bound: 1 + sqrt(delta (1 - p) / p).
    assert any("upper" in x and "sqrt" in x for x in latex)
    at.button(key="lab_add").click().run()
    _no_exception(at)
    assert at.session_state["user_divergences"] == {"pearson_copy": ("(u - 1)**2", False)}
    # Validation against the convex solver, kept small.
    at.slider(key="lab_val_np").set_value(3).run()
    at.multiselect(key="lab_val_deltas").set_value([0.1]).run()
    at.button(key="lab_val_run").click().run()
    _no_exception(at)
    assert any(s.value.startswith("PASS") for s in at.success)
    summary = at.table[-1].value
    assert set(summary["verdict"]) == {"PASS"}
    assert "convex vs band_bounds" in set(summary["pair"])
    assert len(at.get("plotly_chart")) == 1


# --------------------------------------------------------------------------------------
# Simulation page
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_simulation_page_runs_with_progress_and_matches_the_library():
    sim = pytest.importorskip("bandtheory.simulate")
    pytest.importorskip("torch")
    at = _page("pages/4_Simulation.py")
    _no_exception(at)
    assert any("Run simulation" in i.value for i in at.info)
    at.slider(key="sim_steps").set_value(10).run()
    at.slider(key="sim_seeds").set_value(2).run()
    at.select_slider(key="sim_K").set_value(50).run()
    at.button(key="sim_run").click().run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 1
    assert len(at.get("progress")) == 1
    shown = at.table[0].value
    # The same run through the library gives the same summary (the lab is deterministic).
    specs = ["clip:eps=0.2", "clip_higher:eps_low=0.2,eps_high=0.28", "band_kl:delta=0.05", "band_tv:delta=0.05"]
    table = sim.simulate("bandit", specs, seeds=2, K=50,
                         config=sim.TrainConfig(steps=10, group=16, epochs=4, minibatches=4, lr=0.05))
    expected = sim.summarize(table).set_index("label")
    np.testing.assert_allclose(shown["final_entropy"].astype(float), expected["final_entropy"], rtol=1e-12)
    assert any("vs clip 0" in m.value.replace("\\", "") for m in at.markdown)
    # Extremes: zero steps and a K of 2 never raise.
    at.slider(key="sim_steps").set_value(0).run()
    at.select_slider(key="sim_K").set_value(2).run()
    at.button(key="sim_run").click().run()
    _no_exception(at)
