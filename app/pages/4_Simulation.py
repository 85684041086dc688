"""Simulation page: the entropy-collapse lab in the browser.

Pick schemes and settings, run :func:`bandtheory.simulate.simulate` with a progress bar,
and watch the policy's entropy and the probability of the rare best token (or
trajectory) over training, one line per scheme with its confidence band over seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as common  # noqa: E402
from bandtheory import divergences  # noqa: E402

DELTAS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
TITLES = {
    "entropy": "entropy of π (nats)",
    "p_best": "probability of the rare best token / trajectory",
    "reward": "expected reward",
    "batch_reward": "mean sampled reward",
    "clip_upper_pos": "fraction clipped at the upper bound (A > 0)",
    "clip_lower_neg": "fraction clipped at the lower bound (A < 0)",
    "kl": "KL(π_old ‖ π) per update",
    "n99": "tokens holding 99% of the mass",
}
FIXED = {"clip": "canonical clip", "clip_higher": "Clip-Higher", "dcpo": "DCPO", "none": "no clipping"}


def _specs(fixed: list[str], bands: list[str], *, delta: float, eps: float, eps_low: float,
           eps_high: float) -> list[str]:
    """Scheme specs in the grammar of :func:`bandtheory.simulate.parse_scheme`."""
    out = []
    for name in fixed:
        if name == "clip":
            out.append(f"clip:eps={eps!r}")
        elif name in ("clip_higher", "dcpo"):
            out.append(f"{name}:eps_low={eps_low!r},eps_high={eps_high!r}")
        else:
            out.append(name)
    out += [f"band_{name}:delta={delta!r}" for name in bands]
    return out


def page() -> None:
    st.title("Simulation: entropy collapse")
    st.caption(
        "A tabular softmax policy over K tokens (Zipf-like start: most tokens are rare) "
        "trained GRPO-style with each clipping scheme. Fixed clipping limits how fast a rare "
        "token can grow (by at most ε_high·p per update); the Band allows more. Whether that "
        "keeps the entropy higher in a given setting is what a run measures. Curves: mean "
        "over seeds with a 95% confidence band."
    )
    sim = common.optional_module("bandtheory.simulate", "The simulation")
    if sim is None or not hasattr(sim, "simulate"):
        if sim is not None:
            st.info("This installation's bandtheory.simulate has no `simulate` function.")
        return

    with st.sidebar:
        st.header("Schemes")
        fixed = st.multiselect("fixed clipping", list(FIXED), default=["clip", "clip_higher"],
                               format_func=FIXED.__getitem__, key="sim_fixed")
        bands = st.multiselect("Band divergences", list(divergences.names()), default=["kl", "tv"],
                               key="sim_bands")
        delta = st.select_slider("Band radius δ", options=DELTAS, value=0.05, key="sim_delta")
        eps = st.slider("clip ε", 0.0, 1.0, 0.2, 0.01, key="sim_eps")
        eps_low = st.slider("ε_low (Clip-Higher, DCPO)", 0.0, 1.0, 0.2, 0.01, key="sim_eps_low")
        eps_high = st.slider("ε_high (Clip-Higher, DCPO)", 0.0, 3.0, 0.28, 0.01, key="sim_eps_high")

    c1, c2, c3, c4 = st.columns(4)
    env = c1.radio("environment", ["bandit", "sequence"], horizontal=True, key="sim_env",
                   help="bandit: one step, the best token is rare. sequence: a short task whose "
                        "best trajectory passes through rare tokens.")
    seeds = c2.slider("seeds", 1, 10, 3, key="sim_seeds")
    steps = c3.slider("steps", 0, 400, 100, 10, key="sim_steps")
    K = c4.select_slider("vocabulary K", options=(2, 10, 50, 100, 200, 300, 500, 1000), value=200, key="sim_K")
    with st.expander("training loop"):
        d1, d2, d3, d4 = st.columns(4)
        group = d1.select_slider("group G", options=(2, 4, 8, 16, 32, 64), value=16, key="sim_group")
        epochs = d2.slider("epochs per batch", 1, 8, 4, key="sim_epochs",
                           help="With 1 epoch and 1 minibatch the ratio stays 1 and no scheme matters.")
        divisors = [m for m in (1, 2, 4, 8, 16) if group % m == 0]
        minibatches = d3.select_slider("minibatches", options=divisors, value=min(4, divisors[-1]),
                                       key="sim_minibatches")
        lr = d4.select_slider("Adam lr", options=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2), value=0.05, key="sim_lr")
    metrics = st.multiselect("curves", list(TITLES), default=["entropy", "p_best"],
                             format_func=lambda m: TITLES[m], key="sim_metrics")

    specs = _specs(fixed, bands, delta=float(delta), eps=float(eps), eps_low=float(eps_low),
                   eps_high=float(eps_high))
    settings = (env, tuple(specs), int(seeds), int(steps), int(K), int(group), int(epochs),
                int(minibatches), float(lr))
    if not specs:
        st.info("Choose at least one scheme in the sidebar.")
        return
    st.caption(f"{len(specs)} scheme(s) × {seeds} seed(s) × {steps} steps.")
    if st.button("Run simulation", type="primary", key="sim_run"):
        bar = st.progress(0.0, text="starting…")

        def progress(done: int, total: int) -> None:
            bar.progress(min(done / total, 1.0) if total else 1.0, text=f"step {done} of {total}")

        try:
            config = sim.TrainConfig(steps=int(steps), group=int(group), epochs=int(epochs),
                                     minibatches=int(minibatches), lr=float(lr))
            table = sim.simulate(env, specs, seeds=int(seeds), config=config, K=int(K), progress=progress)
        except (ValueError, TypeError, ImportError) as exc:
            bar.empty()
            st.error(f"Simulation refused: {common.plain(exc)}")
            return
        bar.progress(1.0, text="done")
        st.session_state["sim_result"] = (settings, table)

    stored = st.session_state.get("sim_result")
    if stored is None:
        st.info("Set the schemes and the loop, then press **Run simulation**.")
        return
    if stored[0] != settings:
        st.caption("The settings changed since the last run; showing the last run's results.")
    table = stored[1]
    from bandtheory.plotting import interactive as ip

    aggregated = sim.aggregate(table, metrics=[m for m in sim.METRICS])
    fig = ip.simulation_figure(aggregated, metrics=metrics or ["entropy"], titles=TITLES)
    common.chart(fig, table, stem="simulation", key="sim")
    st.subheader("Summary")
    summary = sim.summarize(table)
    st.table(summary.set_index("label").drop(columns=["scheme"]))
    clip_keys = [sim.parse_scheme(spec).key for spec in stored[0][1] if spec.startswith("clip:")]
    if clip_keys:
        st.markdown(common.plain(sim.verdict(table, baseline=clip_keys[0])))
    else:
        st.caption("Add canonical clipping to compare the Bands with it in words.")


page()
