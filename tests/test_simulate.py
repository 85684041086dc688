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
    half = 12.706204736174698 * vals.std(ddof=1) / math.sqrt(2)  # t_{0.975, 1}
    assert row["mean"] == pytest.approx(vals.mean())
    assert row["hi"] - row["mean"] == pytest.approx(half, rel=1e-9)
    summary = lab.summarize(table)
    assert list(summary.scheme) == ["clip", "band_kl", "none"]
    assert isinstance(lab.verdict(table), str)


def test_summary_and_verdict_on_a_constructed_table():
    rows = []
    for scheme, label, p_path, ent in (("clip", "clip", [0.1, 0.2, 0.3], 1.0),
                                       ("band_kl", "Band", [0.1, 0.6, 0.9], 2.0)):
        for seed in range(3):
            for step, pb in enumerate(p_path):
                rows.append(dict(env="bandit", scheme=scheme, label=label, seed=seed, step=step,
                                 entropy=ent + 0.01 * seed, p_best=pb, reward=pb, batch_reward=pb,
                                 clip_upper_pos=0.0, clip_lower_neg=0.0, kl=0.0, n99=1.0))
    table = pd.DataFrame(rows)
    s = lab.summarize(table).set_index("scheme")
    assert s.loc["band_kl", "median_steps_to_half"] == 1
    assert s.loc["band_kl", "reached"] == 3 and s.loc["clip", "reached"] == 0
    assert math.isnan(s.loc["clip", "median_steps_to_half"])
    text = lab.verdict(table)
    assert "the claim held in this run" in text and "higher" in text
    assert "sooner in 3 seed(s)" in text
    # swap the roles: the words must say it did not hold
    swapped = table.replace({"scheme": {"clip": "band_kl", "band_kl": "clip"}})
    text = lab.verdict(swapped)
    assert "did NOT hold" in text and "LOWER" in text and "later in 3" in text


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
