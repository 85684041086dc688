"""Tests of the entropy-collapse lab (bandtheory.simulate)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from bandtheory import schemes  # noqa: E402
from bandtheory import simulate as lab  # noqa: E402
from bandtheory.losses import policy_loss  # noqa: E402
from bandtheory.simulate.envs import Bandit, Sequence, entropy, kl_divergence, mass_count  # noqa: E402

TINY = lab.TrainConfig(steps=6, group=4, epochs=2, minibatches=2, lr=0.2)
SMALL_BANDIT = Bandit(K=12, best_rank=6, n_head=2, tail_max=0.5)
SMALL_SEQ = Sequence(K=6, target_ranks=(3, 4), n_head=1, tail_max=0.3)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------
# Determinism and the one-update identity
# --------------------------------------------------------------------------------------


def test_same_seed_same_table():
    a = lab.simulate(SMALL_BANDIT, ["clip", "band_kl"], seeds=[3, 7], config=TINY)
    b = lab.simulate(SMALL_BANDIT, ["clip", "band_kl"], seeds=[3, 7], config=TINY)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = lab.simulate(SMALL_BANDIT, ["clip", "band_kl"], seeds=[4, 7], config=TINY)
    assert not np.array_equal(a[a.seed == 3]["entropy"].to_numpy(), c[c.seed == 4]["entropy"].to_numpy())


def test_seed_independent_of_companions():
    alone = lab.simulate(SMALL_BANDIT, ["clip"], seeds=[5], config=TINY)
    together = lab.simulate(SMALL_BANDIT, ["clip"], seeds=[1, 5, 9], config=TINY)
    mine = together[together.seed == 5].reset_index(drop=True)
    for col in lab.METRICS:
        np.testing.assert_allclose(mine[col], alone[col], rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("env", [SMALL_BANDIT, SMALL_SEQ])
def test_one_update_per_batch_makes_schemes_identical(env):
    config = lab.TrainConfig(steps=8, group=4, epochs=1, minibatches=1, lr=0.3)
    specs = ["clip", "clip_higher", "dcpo", "band_kl", "band_tv:delta=0.01", "band_chi2", "none"]
    table = lab.simulate(env, specs, seeds=2, config=config)
    ref = table[table.scheme == "clip"].reset_index(drop=True)
    cols = ["entropy", "p_best", "reward", "batch_reward", "kl", "n99"]
    for spec in specs[1:]:
        other = table[table.scheme == table.scheme.unique()[specs.index(spec)]].reset_index(drop=True)
        for col in cols:
            np.testing.assert_array_equal(other[col].to_numpy(), ref[col].to_numpy())
    # the ratio is exactly 1 at the only update: nothing is ever clipped
    assert (table.loc[table.step > 0, ["clip_upper_pos", "clip_lower_neg"]] == 0).all().all()
    # and the policy did move (the test would be vacuous otherwise)
    assert (ref.kl[ref.step > 0] > 1e-6).all()


def test_several_epochs_make_schemes_differ():
    table = lab.simulate(SMALL_BANDIT, ["clip:eps=0.05", "none"], seeds=1,
                         config=lab.TrainConfig(steps=5, group=4, epochs=4, minibatches=2, lr=0.3))
    a = table[table.scheme == "clip:eps=0.05"].entropy.to_numpy()
    b = table[table.scheme == "none"].entropy.to_numpy()
    assert not np.allclose(a[1:], b[1:])
    assert table[table.scheme == "clip:eps=0.05"].clip_upper_pos.iloc[1:].max() > 0


# --------------------------------------------------------------------------------------
# Metrics against direct computations
# --------------------------------------------------------------------------------------


def test_metric_helpers_direct():
    p = np.array([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(entropy(p), [-(0.5 * math.log(0.5) + 0.3 * math.log(0.3)
                                               + 0.15 * math.log(0.15) + 0.05 * math.log(0.05)),
                                             math.log(4)], rtol=1e-14)
    # 0.5+0.3+0.15 = 0.95 < 0.99 -> all four; uniform: 0.75 < 0.99 -> four
    np.testing.assert_array_equal(mass_count(p), [4, 4])
    np.testing.assert_array_equal(mass_count(np.array([0.991, 0.009, 0.0])), 1)
    np.testing.assert_array_equal(mass_count(np.array([0.5, 0.49, 0.01])), 2)
    q = np.array([0.4, 0.4, 0.1, 0.1])
    direct = sum(a * math.log(a / b) for a, b in zip(p[0], q))
    np.testing.assert_allclose(kl_divergence(p[0], q), direct, rtol=1e-14)


def _trajectories(env, probs):
    """Brute force over all K^L trajectories: (prob, mean return, is_best, states)."""
    L = env.length
    for traj in itertools.product(range(env.K), repeat=L):
        prob, on = 1.0, True
        states = []
        for t, a in enumerate(traj):
            s = env.state_index(t, on)
            states.append(s)
            prob *= probs[s, a]
            on = on and a == env.best_tokens[t]
        best = on
        ret = np.mean([env.mean_reward[t, a] for t, a in enumerate(traj)]) + env.bonus * best
        yield prob, ret, best, states


def test_sequence_exact_quantities_by_enumeration():
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(SMALL_SEQ.n_states, SMALL_SEQ.K)) * 2)
    total = p_best = reward = 0.0
    visits = np.zeros(SMALL_SEQ.n_states)
    for prob, ret, best, states in _trajectories(SMALL_SEQ, probs):
        total += prob
        reward += prob * ret
        p_best += prob * best
        for s in states:
            visits[s] += prob
    assert total == pytest.approx(1.0, abs=1e-12)
    P = probs[None]
    np.testing.assert_allclose(SMALL_SEQ.expected_reward(P), [reward], rtol=1e-12)
    np.testing.assert_allclose(SMALL_SEQ.best_probability(P), [p_best], rtol=1e-12)
    np.testing.assert_allclose(SMALL_SEQ.visitation(P), [visits], rtol=1e-12)


def test_sequence_sampling_matches_policy():
    rng = np.random.default_rng(1)
    probs = _softmax(rng.normal(size=(SMALL_SEQ.n_states, SMALL_SEQ.K)))
    n = 40000
    tokens, states = SMALL_SEQ.sample(probs[None], rng.random((1, n, SMALL_SEQ.length)))
    # first-position frequencies vs probs[0]: 5 sigma binomial tolerance
    freq = np.bincount(tokens[0, :, 0], minlength=SMALL_SEQ.K) / n
    np.testing.assert_allclose(freq, probs[0], atol=5 * math.sqrt(0.25 / n))
    on = tokens[0, :, 0] == SMALL_SEQ.best_tokens[0]
    assert np.all(states[0, on, 1] == SMALL_SEQ.state_index(1, True))
    assert np.all(states[0, ~on, 1] == SMALL_SEQ.state_index(1, False))


def test_bandit_returns_and_sampling():
    rng = np.random.default_rng(2)
    probs = _softmax(rng.normal(size=(1, SMALL_BANDIT.K)))
    tokens, states = SMALL_BANDIT.sample(probs[None], np.array([[[0.0], [0.999999999]]]))
    assert tokens[0, 0, 0] == 0 and tokens[0, 1, 0] == SMALL_BANDIT.K - 1
    assert np.all(states == 0)
    z = np.array([[0.5, -1.0]])
    np.testing.assert_allclose(SMALL_BANDIT.returns(tokens, z)[0],
                               SMALL_BANDIT.mean_reward[[0, SMALL_BANDIT.K - 1]] + SMALL_BANDIT.noise * z[0])
    assert SMALL_BANDIT.mean_reward.argmax() == SMALL_BANDIT.best_rank - 1


@pytest.mark.parametrize("env", [SMALL_BANDIT, SMALL_SEQ])
def test_recorded_metrics_match_direct_computation(env):
    """Replay the loop's logits and recompute every policy metric from them."""
    config = lab.TrainConfig(steps=4, group=4, epochs=2, minibatches=2, lr=0.2)
    spec = lab.parse_scheme("clip")
    out = lab.run(env, spec, [0, 1], config, record_logits=True)
    logits = out["logits"]  # (T+1, S, nS, K)
    for t in range(config.steps + 1):
        for s in range(2):
            p = _softmax(logits[t, s])
            d = env.visitation(p[None])[0]
            ent = sum(d[i] * entropy(p[i]) for i in range(env.n_states)) / env.length
            n99 = sum(d[i] * mass_count(p[i]) for i in range(env.n_states)) / env.length
            assert out["entropy"][t, s] == pytest.approx(ent, rel=1e-10)
            assert out["n99"][t, s] == pytest.approx(n99, rel=1e-12)
            assert out["p_best"][t, s] == pytest.approx(env.best_probability(p[None])[0], rel=1e-10)
            assert out["reward"][t, s] == pytest.approx(env.expected_reward(p[None])[0], rel=1e-10)
            if t == 0:
                assert math.isnan(out["kl"][t, s])
                continue
            q = _softmax(logits[t - 1, s])
            dq = env.visitation(q[None])[0]
            kl = sum(dq[i] * kl_divergence(q[i], p[i]) for i in range(env.n_states)) / env.length
            assert out["kl"][t, s] == pytest.approx(kl, rel=1e-8, abs=1e-15)
    if isinstance(env, Bandit):
        # the bandit's entropy is the plain entropy of the one state
        p0 = _softmax(env.init_logits())[0]
        assert out["entropy"][0, 0] == pytest.approx(-(p0 * np.log(p0)).sum(), rel=1e-12)


def _replay_group(env, p_old, u, z):
    """Sample a group from ``p_old`` (``(n_states, K)``) with the loop's uniforms and noise,
    directly: inverse CDF token by token, states from the prefix, returns from the layout."""
    G, L = u.shape
    tokens = np.empty((G, L), dtype=int)
    states = np.empty((G, L), dtype=int)
    returns = np.empty(G)
    for g in range(G):
        on = True
        for t in range(L):
            s = 0 if isinstance(env, Bandit) else env.state_index(t, on)
            cdf = np.cumsum(p_old[s])
            tokens[g, t] = min(np.searchsorted(cdf, u[g, t] * cdf[-1], side="left"), env.K - 1)
            states[g, t] = s
            on = on and tokens[g, t] == env.best_tokens[t]
        if isinstance(env, Bandit):
            returns[g] = env.mean_reward[tokens[g, 0]] + env.noise * z[g]
        else:
            returns[g] = (np.mean([env.mean_reward[t, tokens[g, t]] for t in range(L)])
                          + env.bonus * on + env.noise * z[g])
    return tokens, states, returns


@pytest.mark.parametrize("env", [SMALL_BANDIT, SMALL_SEQ], ids=["bandit", "sequence"])
@pytest.mark.parametrize("spec", ["clip:eps=0.05", "band_tv:delta=0.02"])
@pytest.mark.parametrize("minibatches", [1, 2])
def test_update_metrics_match_a_replay_of_the_loop(env, spec, minibatches):
    """Record every minibatch of a tiny run and recompute, from the recorded logits and a
    replay of each seed's random numbers, the recorded batch_reward, advantages, ratios,
    clip_upper_pos, clip_lower_neg (mean over the E x M minibatches of the fraction of the
    minibatch's tokens) and kl."""
    E, M, G, T = 2, minibatches, 4, 5
    config = lab.TrainConfig(steps=T, group=G, epochs=E, minibatches=M, lr=0.3)
    seeds = [0, 3]
    scheme = lab.parse_scheme(spec)
    records = []
    out = lab.run(env, scheme, seeds, config, record_logits=True, trace=records.append)
    assert len(records) == T * E * M
    L, mb = env.length, G // M
    rngs = [np.random.default_rng(s) for s in seeds]
    clipped = {"up": 0, "lo": 0}
    for t in range(1, T + 1):
        recs = [r for r in records if r["step"] == t]
        assert [(r["epoch"], r["minibatch"]) for r in recs] == [(e, j) for e in range(E)
                                                                 for j in range(M)]
        for i, rng in enumerate(rngs):
            # the loop's order of draws for one seed within one step
            u, z = rng.random((G, L)), rng.standard_normal(G)
            perms = [rng.permutation(G) for _ in range(E)]
            p_old = _softmax(out["logits"][t - 1, i])
            tokens, states, returns = _replay_group(env, p_old, u, z)
            assert out["batch_reward"][t, i] == pytest.approx(returns.mean(), rel=1e-12)
            adv = (returns - returns.mean()) / (returns.std() + 1e-8)
            up = lo = 0.0
            for r in recs:
                ix = perms[r["epoch"]][r["minibatch"] * mb:(r["minibatch"] + 1) * mb]
                np.testing.assert_array_equal(r["index"][i], ix)
                np.testing.assert_array_equal(r["tokens"][i], tokens[ix])
                np.testing.assert_array_equal(r["states"][i], states[ix])
                np.testing.assert_allclose(r["returns"][i], returns, rtol=1e-12)
                A = np.repeat(adv[ix, None], L, axis=1)
                np.testing.assert_allclose(r["adv"][i], A, rtol=1e-9, atol=1e-12)
                p_now = _softmax(r["logits"][i])
                if r["epoch"] == 0 and r["minibatch"] == 0:  # the first gradient is at pi_old
                    np.testing.assert_allclose(p_now, p_old, rtol=1e-12)
                p_tok_old = p_old[states[ix], tokens[ix]]
                ratio = p_now[states[ix], tokens[ix]] / p_tok_old
                np.testing.assert_allclose(np.exp(r["log_prob"][i] - r["old_log_prob"][i]),
                                           ratio, rtol=1e-9)
                band = scheme.scheme.bounds(np.log(p_tok_old))
                np.testing.assert_allclose(r["lower"][i], band.lower, rtol=1e-12)
                np.testing.assert_allclose(r["upper"][i], band.upper, rtol=1e-12)
                hit_up = (A > 0) & (ratio > np.asarray(band.upper))
                hit_lo = (A < 0) & (ratio < np.asarray(band.lower))
                up += hit_up.mean() / (E * M)
                lo += hit_lo.mean() / (E * M)
                clipped["up"] += int(hit_up.sum())
                clipped["lo"] += int(hit_lo.sum())
            assert out["clip_upper_pos"][t, i] == pytest.approx(up, abs=1e-15)
            assert out["clip_lower_neg"][t, i] == pytest.approx(lo, abs=1e-15)
            p_new = _softmax(out["logits"][t, i])
            d_old = env.visitation(p_old[None])[0]
            kl = sum(d_old[s] * np.sum(p_old[s] * np.log(p_old[s] / p_new[s]))
                     for s in range(env.n_states)) / L
            assert out["kl"][t, i] == pytest.approx(kl, rel=1e-8, abs=1e-15)
    # clipping did bite, both ways, so the fractions were checked on non-zero counts
    assert clipped["up"] > 0 and clipped["lo"] > 0


def test_trace_off_changes_nothing():
    spec = lab.parse_scheme("clip:eps=0.05")
    config = lab.TrainConfig(steps=3, group=4, epochs=2, minibatches=2, lr=0.3)
    plain = lab.run(SMALL_SEQ, spec, [1], config)
    traced = lab.run(SMALL_SEQ, spec, [1], config, trace=lambda rec: None)
    for key in lab.METRICS:
        np.testing.assert_array_equal(plain[key], traced[key])


def test_clip_fractions_match_policy_loss():
    rng = np.random.default_rng(3)
    S, N = 3, 16
    old = torch.tensor(np.log(rng.uniform(0.001, 0.9, size=(S, N))))
    new = old + torch.tensor(rng.normal(scale=0.4, size=(S, N)))
    new = torch.minimum(new, torch.zeros(()))
    adv = torch.tensor(rng.normal(size=(S, N)))
    for scheme in (schemes.clip(eps=0.2), schemes.band("kl", delta=0.05), schemes.dcpo()):
        band = scheme.bounds(old)
        hi, lo = lab.clip_fractions(new, old, adv, band.lower, band.upper)
        for s in range(S):
            _, m = policy_loss(new[s], old[s], adv[s], scheme=scheme)
            assert float(hi[s]) == pytest.approx(float(m["clip_frac_upper"]), abs=1e-15)
            assert float(lo[s]) == pytest.approx(float(m["clip_frac_lower"]), abs=1e-15)
        # direct count on the first row
        r = np.exp((new[0] - old[0]).numpy())
        up = np.asarray(band.upper[0])
        assert float(hi[0]) == np.mean((adv[0].numpy() > 0) & (r > up))


# --------------------------------------------------------------------------------------
# Runs, tables, summaries
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["bandit", "sequence"])
def test_each_env_runs_and_csv_has_every_column(env, tmp_path):
    calls = []
    table = lab.simulate(env, ["clip", "band_kl", "none"], seeds=2, K=16,
                         config=lab.TrainConfig(steps=3, group=4, epochs=2, minibatches=2),
                         progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (9, 9) and len(calls) == 9
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert tuple(back.columns) == lab.COLUMNS
    assert len(back) == 3 * 2 * 4
    assert back.loc[back.step > 0, list(lab.METRICS)].notna().all().all()
    agg = lab.aggregate(table)
    assert set(agg.metric) == set(lab.METRICS)
    row = agg[(agg.metric == "entropy") & (agg.step == 2) & (agg.scheme == "clip")].iloc[0]
    vals = table[(table.step == 2) & (table.scheme == "clip")].entropy.to_numpy()
    # two seeds: the resampled means are min, mid-point and max with probabilities
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% bootstrap quantiles are the min and the max
    assert row["mean"] == pytest.approx(vals.mean(), rel=1e-14)
    assert (row["lo"], row["hi"]) == (vals.min(), vals.max())
    assert row["n"] == 2
    summary = lab.summarize(table)
    assert list(summary.scheme) == ["clip", "band_kl", "none"]
    assert isinstance(lab.verdict(table), str)


def _reach_table(reach, final_entropy, *, steps=100):
    """A per-step table in which P(best) jumps to 1 at ``reach[scheme][seed]`` (None = never)
    and the entropy is ``final_entropy[scheme][seed]`` at every step."""
    rows = []
    for scheme, per_seed in reach.items():
        for seed, hit in enumerate(per_seed):
            for step in range(steps + 1):
                pb = 1.0 if hit is not None and step >= hit else 0.0
                rows.append(dict(env="bandit", scheme=scheme, label=scheme.upper(), seed=seed,
                                 step=step, entropy=final_entropy[scheme][seed], p_best=pb,
                                 reward=pb, batch_reward=pb, clip_upper_pos=0.0,
                                 clip_lower_neg=0.0, kl=0.0, n99=1.0))
    return pd.DataFrame(rows)


def test_sign_test_values():
    assert lab.sign_test(5, 0) == 1 / 32
    assert lab.sign_test(4, 1) == 6 / 32
    assert lab.sign_test(0, 3) == 1.0
    assert lab.sign_test(0, 0) == 1.0
    # against the binomial tail computed another way
    from scipy import stats
    for w, l in ((7, 2), (3, 3), (10, 0), (1, 9)):
        assert lab.sign_test(w, l) == pytest.approx(stats.binom.sf(w - 1, w + l, 0.5), rel=1e-12)


def test_summary_and_verdict_on_a_constructed_table():
    n = 6
    table = _reach_table({"clip": [None] * n, "band_kl": [10] * n},
                         {"clip": [1.0 + 0.01 * i for i in range(n)],
                          "band_kl": [2.0 + 0.01 * i for i in range(n)]})
    s = lab.summarize(table).set_index("scheme")
    assert s.loc["band_kl", "median_steps_to_half"] == 10
    assert s.loc["band_kl", "reached"] == n and s.loc["clip", "reached"] == 0
    assert math.isnan(s.loc["clip", "median_steps_to_half"])
    text = lab.verdict(table)
    assert "the claim held in this run" in text
    assert "sooner: yes, sooner" in text and "entropy: yes, higher" in text
    assert f"clearly sooner in {n} seed(s)" in text and "p(sooner) = 0.0156" in text
    assert "Rule:" in text and "p <= 0.05" in text and "max(2 steps, 10%)" in text
    # swap the roles: the words must say it did not hold
    swapped = table.replace({"scheme": {"clip": "band_kl", "band_kl": "clip"}})
    text = lab.verdict(swapped)
    assert "did NOT hold" in text and "no, LOWER" in text and "no, LATER" in text
    assert f"clearly later in {n}" in text


def test_verdict_one_seed_sooner_is_not_support():
    # the audited case: sooner in 1/5 seeds, neither in the other four
    table = _reach_table({"clip": [None] * 5, "band_kl": [40, None, None, None, None]},
                         {"clip": [0.5] * 5, "band_kl": [0.5] * 5})
    c = lab.compare(table, "band_kl", "clip", quantity="reach")
    assert (c.wins, c.losses, c.ties) == (1, 0, 4) and c.p_win == 0.5
    assert c.outcome == "no clear difference"
    text = lab.verdict(table)
    assert "did NOT hold" in text and "sooner: no clear difference" in text
    assert "entropy: no clear difference" in text


def test_verdict_one_step_edge_is_within_the_margin():
    # the audited case: best token not rare, 5 vs 6 steps in every seed
    table = _reach_table({"clip": [6] * 5, "band_kl": [5] * 5},
                         {"clip": [0.01] * 5, "band_kl": [0.006] * 5})
    reach = lab.compare(table, "band_kl", "clip", quantity="reach")
    assert (reach.wins, reach.ties) == (0, 5) and reach.outcome == "no clear difference"
    # entropies below the 0.01-nat floor do not count either
    ent = lab.compare(table, "band_kl", "clip", quantity="final_entropy")
    assert ent.ties == 5 and ent.outcome == "no clear difference"
    assert "did NOT hold" in lab.verdict(table)


@pytest.mark.parametrize("band, clip, outcome", [
    (80, 100, "better"),                # 20 steps >= 10% of 100
    (91, 100, "no clear difference"),   # 9 steps < 10% of 100
    (None, 100, "worse"),               # never = step 151: 51 steps >= 10% of 151
    (None, 140, "no clear difference"),  # 11 steps < 10% of 151: never may be soon after
])
def test_compare_reach_margin(band, clip, outcome):
    table = _reach_table({"clip": [clip] * 5, "band_kl": [band] * 5},
                         {"clip": [1.0] * 5, "band_kl": [1.0] * 5}, steps=150)
    c = lab.compare(table, "band_kl", "clip", quantity="reach")
    assert c.outcome == outcome
    if band is None:
        assert c.scheme_values == (151.0,) * 5
    if outcome == "worse":
        assert c.losses == 5 and c.p_loss == 1 / 32


def test_compare_final_entropy_margin_and_errors():
    table = _reach_table({"clip": [None] * 5, "band_kl": [None] * 5},
                         {"clip": [1.0, 1.0, 1.0, 1.0, 1.0],
                          "band_kl": [1.2, 1.15, 1.12, 1.3, 1.09]})
    c = lab.compare(table, "band_kl", "clip", quantity="final_entropy")
    # margin max(0.01, 0.1 * larger): 1.09 is within 0.109 of 1.0, the rest are not
    assert (c.wins, c.losses, c.ties) == (4, 0, 1) and c.p_win == 1 / 16
    assert c.outcome == "no clear difference"
    assert lab.compare(table, "band_kl", "clip", quantity="final_entropy",
                       level=0.1).outcome == "better"
    with pytest.raises(ValueError, match="unknown quantity"):
        lab.compare(table, "band_kl", "clip", quantity="entropy")
    with pytest.raises(ValueError, match="not in the table"):
        lab.compare(table, "band_tv", "clip", quantity="reach")
    # too few seeds for the sign test to claim anything: the words say so
    small = _reach_table({"clip": [None] * 3, "band_kl": [5] * 3},
                         {"clip": [1.0] * 3, "band_kl": [2.0] * 3})
    text = lab.verdict(small)
    assert "did NOT hold" in text and "can claim nothing" in text


def test_pairing_by_seed_shares_the_initial_policy_and_first_batch():
    """What makes the comparisons paired: for one seed every scheme starts from the same
    policy and draws the same first group (the runs part only after the first update)."""
    table = lab.simulate(SMALL_BANDIT, ["clip", "band_kl", "none"], seeds=[0, 4, 9], config=TINY)
    for col in ("entropy", "p_best", "reward", "n99"):
        first = table[table.step == 0].pivot(index="seed", columns="scheme", values=col)
        assert (first.nunique(axis=1) == 1).all()
    batch = table[table.step == 1].pivot(index="seed", columns="scheme", values="batch_reward")
    assert (batch.nunique(axis=1) == 1).all()
    assert batch.iloc[:, 0].nunique() == 3  # but the seeds differ from each other


# --------------------------------------------------------------------------------------
# Confidence bands
# --------------------------------------------------------------------------------------


def _t_band(values):
    from scipy import stats
    x = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean() - half, x.mean() + half


def test_bootstrap_band_small_cases():
    # a probability seen in one seed of five: the t-interval goes below 0, the bootstrap not
    x = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    assert _t_band(x)[0] < 0
    m, lo, hi = lab.mean_band(x)
    assert m == 0.2 and lo == 0.0 and 0.2 <= hi <= 1.0
    # one value: a point; none: NaN; NaNs are dropped
    assert lab.mean_band(np.array([0.3])) == (0.3, 0.3, 0.3)
    assert all(math.isnan(v) for v in lab.mean_band(np.array([np.nan, np.nan])))
    assert lab.mean_band(np.array([0.1, np.nan, 0.5])) == pytest.approx((0.3, 0.1, 0.5))
    # deterministic, and row-wise the same as one row at a time
    rng = np.random.default_rng(0)
    X = rng.random((7, 5))
    a, b = lab.bootstrap_band(X), lab.bootstrap_band(X)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    for i in range(7):  # (BLAS may round the batched sums differently in the last bit)
        assert lab.mean_band(X[i]) == pytest.approx((a[0][i], a[1][i], a[2][i]), rel=1e-14)
    # for many seeds it approaches the normal interval of the mean
    y = rng.normal(size=400)
    m, lo, hi = lab.mean_band(y)
    assert hi - lo == pytest.approx(2 * 1.96 * y.std() / 20, rel=0.1)
    with pytest.raises(ValueError, match="confidence"):
        lab.mean_band(x, confidence=1.0)


@pytest.mark.parametrize("env", [SMALL_BANDIT, SMALL_SEQ])
def test_every_band_lies_in_the_natural_range(env):
    config = lab.TrainConfig(steps=25, group=4, epochs=3, minibatches=2, lr=0.3)
    table = lab.simulate(env, ["clip:eps=0.05", "band_kl", "none"], seeds=5, config=config)
    agg = lab.aggregate(table).dropna(subset=["mean"])
    mu = env.mean_reward
    if isinstance(env, Bandit):
        r_lo, r_hi = mu.min(), mu.max()
    else:
        r_lo, r_hi = mu.min(axis=1).mean(), env.optimal_reward()
    ranges = {"entropy": (0.0, math.log(env.K)), "p_best": (0.0, 1.0), "reward": (r_lo, r_hi),
              "clip_upper_pos": (0.0, 1.0), "clip_lower_neg": (0.0, 1.0),
              "kl": (0.0, math.inf), "n99": (1.0, env.K)}
    t_outside = dict.fromkeys(ranges, 0)
    for metric, (low, high) in ranges.items():
        sub = agg[agg.metric == metric]
        assert len(sub) > 0
        assert (sub["lo"] >= low).all() and (sub["hi"] <= high).all(), metric
        assert (sub["lo"] <= sub["mean"]).all() and (sub["mean"] <= sub["hi"]).all(), metric
        for (scheme, step), grp in table[table.step > 0].groupby(["scheme", "step"]):
            t_lo, t_hi = _t_band(grp[metric])
            t_outside[metric] += bool(t_lo < low or t_hi > high)
    # the run is one where Student's t leaves the range of the audited metrics (the test
    # is not vacuous)
    audited = ("entropy", "p_best", "reward") if isinstance(env, Bandit) else ("entropy", "p_best")
    assert all(t_outside[m] > 0 for m in audited), t_outside
    # every band inside the seeds' own values, batch_reward included
    for (scheme, metric, step), grp in agg.groupby(["scheme", "metric", "step"]):
        vals = table[(table.scheme == scheme) & (table.step == step)][metric]
        row = grp.iloc[0]
        assert vals.min() - 1e-12 <= row["lo"] <= row["hi"] <= vals.max() + 1e-12
    summary = lab.summarize(table)
    for name, (low, high) in (("final_entropy", ranges["entropy"]),
                              ("mean_entropy", ranges["entropy"]),
                              ("final_reward", ranges["reward"])):
        assert (summary[f"{name}_lo"] >= low).all() and (summary[f"{name}_hi"] <= high).all()


def test_sweep_table():
    out = lab.sweep("delta", [0.01, 0.5], env=SMALL_BANDIT, seeds=2,
                    config=lab.TrainConfig(steps=2, group=4, epochs=2, minibatches=2))
    assert list(out.value) == [0.01, 0.5]
    assert {"final_entropy", "final_entropy_lo", "final_reward_hi"} <= set(out.columns)
    out = lab.sweep("eps_high", [0.3], env=SMALL_BANDIT, seeds=1,
                    config=lab.TrainConfig(steps=1, group=4, epochs=2, minibatches=2))
    assert out.scheme.iloc[0].startswith("clip_higher")


def test_entropy_bonus_and_kl_penalty_change_the_run():
    base = lab.simulate(SMALL_BANDIT, ["clip"], seeds=1, config=TINY)
    ent = lab.simulate(SMALL_BANDIT, ["clip"], seeds=1,
                       config=lab.TrainConfig(steps=6, group=4, epochs=2, minibatches=2, lr=0.2,
                                              entropy_coef=0.5))
    assert ent.entropy.iloc[-1] > base.entropy.iloc[-1]
    kl = lab.simulate(SMALL_BANDIT, ["clip"], seeds=1,
                      config=lab.TrainConfig(steps=6, group=4, epochs=2, minibatches=2, lr=0.2,
                                             kl_coef=5.0))
    assert not np.allclose(kl.entropy.to_numpy(), base.entropy.to_numpy())


# --------------------------------------------------------------------------------------
# Bad settings
# --------------------------------------------------------------------------------------


def test_bad_settings_give_clear_errors():
    with pytest.raises(ValueError, match="K .*must be >= 2"):
        lab.simulate("bandit", ["clip"], K=1)
    with pytest.raises(ValueError, match="K must be >= 2"):
        Bandit(K=1, best_rank=1, n_head=0)
    with pytest.raises(ValueError, match="group must be >= 2"):
        lab.TrainConfig(group=1, minibatches=1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        lab.TrainConfig(steps=-1)
    with pytest.raises(ValueError, match="minibatches must divide group"):
        lab.TrainConfig(group=6, minibatches=4)
    with pytest.raises(ValueError, match="unknown scheme 'clipp'.*clip_higher"):
        lab.simulate("bandit", ["clipp"])
    with pytest.raises(ValueError, match="unknown scheme 'band_foo'"):
        lab.parse_scheme("band_foo")
    with pytest.raises(ValueError, match="unknown parameter 'delta' for scheme 'clip'"):
        lab.parse_scheme("clip:delta=0.1")
    with pytest.raises(ValueError, match="unknown env 'maze'"):
        lab.simulate("maze")
    with pytest.raises(ValueError, match="seeds"):
        lab.simulate("bandit", seeds=0)
    with pytest.raises(ValueError, match="duplicate"):
        lab.resolve_schemes(["clip", "clip"])
    with pytest.raises(ValueError, match="unknown sweep"):
        lab.sweep("eps")
    with pytest.raises(ValueError, match="best_rank"):
        Bandit(K=10, best_rank=11)
    with pytest.raises(ValueError, match="lr must be"):
        lab.TrainConfig(lr=0.0)


def test_parse_scheme_values():
    spec = lab.parse_scheme("band_tv:delta=0.1")
    assert spec.key == "band_tv:delta=0.1" and spec.scheme.delta == 0.1 and spec.style == "tv"
    spec = lab.parse_scheme("clip_higher:eps_high=0.4")
    assert spec.scheme.eps_low == 0.2 and spec.scheme.eps_high == 0.4
    none = lab.parse_scheme("none").scheme.bounds(np.log(np.array([0.1, 0.5])))
    np.testing.assert_array_equal(none.lower, [0.0, 0.0])
    assert np.all(np.isinf(none.upper))


def test_cli_simulate(tmp_path, capsys):
    from bandtheory.cli import main

    rc = main(["simulate", "--schemes", "clip", "band_kl", "--seeds", "2", "--steps", "3",
               "--vocab", "16", "--group", "4", "--minibatches", "2", "--epochs", "2",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Band KL" in out and "vs clip 0.2" in out
    for name in ("simulate_bandit.csv", "simulate_bandit_summary.csv", "simulate_bandit.png",
                 "simulate_bandit_aggregate.csv", "simulate_bandit_verdict.txt"):
        assert (tmp_path / name).exists()
    rc = main(["simulate", "--sweep", "delta", "--values", "0.01", "0.1", "--seeds", "1",
               "--steps", "2", "--vocab", "16", "--group", "4", "--minibatches", "2",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    assert (tmp_path / "sweep_delta_bandit.csv").exists()
    assert main(["simulate", "--schemes", "nope", "--out", str(tmp_path)]) == 2
    assert main(["simulate", "--steps", "-1", "--out", str(tmp_path)]) == 2
    assert "steps must be >= 0" in capsys.readouterr().err
