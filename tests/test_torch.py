"""torch support: same dtype/device/shape out, numbers equal to NumPy's, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bandtheory import band_bounds, divergences, schemes

torch = pytest.importorskip("torch")

SCHEMES = [
    schemes.clip(eps=0.2),
    schemes.clip_higher(),
    schemes.dcpo(),
    schemes.band("kl", delta=0.05),
    schemes.band("chi2", delta=0.1, mode="fast"),
    schemes.cap(schemes.relax(schemes.band("tv", delta=0.1)), upper_max=10.0),
    schemes.dual_clip(schemes.clip(), c=3.0),
]


def test_import_does_not_import_torch():
    code = "import sys, bandtheory, bandtheory.losses, bandtheory.fast; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_band_bounds_torch_matches_numpy(mode, dtype):
    rng = np.random.default_rng(1)
    logp = rng.uniform(np.log(1e-8), 0.0, (7, 11))
    tdtype = getattr(torch, dtype)
    x = torch.tensor(logp, dtype=tdtype)
    band = band_bounds(x, "kl", delta=0.05, mode=mode)
    assert band.upper.dtype == tdtype and band.lower.dtype == tdtype
    assert band.upper.shape == x.shape and band.upper.device == x.device
    ref = band_bounds(x.double().numpy(), "kl", delta=0.05)
    np.testing.assert_allclose(band.upper.double().numpy(), ref.upper.astype(tdtype_np(dtype)), rtol=1e-6 if dtype != "bfloat16" else 1e-2)
    np.testing.assert_allclose(band.lower.double().numpy(), ref.lower, rtol=0, atol=1e-6 if dtype != "bfloat16" else 1e-2)


def tdtype_np(dtype):
    return np.float64 if dtype == "bfloat16" else np.dtype(dtype)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_every_scheme_accepts_torch(scheme):
    logp = np.log(np.array([[1e-6, 0.01, 0.3], [0.5, 0.9, 1.0]]))
    x = torch.tensor(logp, dtype=torch.float32)
    band = scheme.bounds(x)
    ref = scheme.bounds(logp.astype(np.float32))
    assert isinstance(band.lower, torch.Tensor) and band.lower.dtype == torch.float32
    np.testing.assert_allclose(band.lower.numpy(), ref.lower, rtol=1e-6)
    np.testing.assert_allclose(band.upper.numpy(), ref.upper, rtol=1e-6)


@pytest.mark.parametrize("name", ["kl", "tv", "hellinger"])
def test_large_torch_input_uses_fixed_steps_and_stays_exact(name):
    from bandtheory.fast import band_table

    rng = np.random.default_rng(2)
    logp = rng.uniform(np.log(1e-8), 0.0, 3 << 15)  # several chunks
    # Exact mode starts from the fast table when one is cached.
    assert band_table(name, delta=0.05).polish_steps is not None
    got = band_bounds(torch.tensor(logp), name, delta=0.05, check_input=False)
    ref = band_bounds(logp[:2000], name, delta=0.05)
    np.testing.assert_allclose(got.upper.numpy()[:2000], ref.upper, rtol=1e-12)
    np.testing.assert_allclose(got.lower.numpy()[:2000], ref.lower, rtol=0, atol=1e-12)


REGISTRY = list(divergences.names()) + ["alpha(2)", "alpha(1/2)", "alpha(-1)", "alpha(3)"]


@pytest.mark.parametrize("name", REGISTRY)
def test_large_torch_input_from_the_start_table_is_exact(name):
    # No fast table at this delta: exact mode builds its start table and takes the
    # certified fixed Newton steps on torch; against the NumPy small-input solver.
    from bandtheory import fast

    rng = np.random.default_rng(29)
    sample = np.concatenate([
        rng.uniform(np.log(1e-300), np.log(0.5), 2000),
        np.log1p(-np.exp(rng.uniform(np.log(1e-12), np.log(0.5), 1000))),
        [0.0, -np.inf, -800.0, -745.0, -1e-300],
    ])
    logp = np.resize(rng.permutation(sample), 40_000)
    div, delta = divergences.get(name), 0.047
    assert fast._cached_table_or_none(div, delta) is None
    got = band_bounds(torch.tensor(logp), name, delta=delta, check_input=False)
    assert fast._start_table(div, delta) is not None
    ref = band_bounds(logp[:sample.size], name, delta=delta)
    up, lo = got.upper.numpy()[:sample.size], got.lower.numpy()[:sample.size]
    assert np.array_equal(np.isinf(up), np.isinf(ref.upper))
    finite = np.isfinite(ref.upper)
    np.testing.assert_allclose(up[finite], ref.upper[finite], rtol=1e-12, atol=0)
    np.testing.assert_allclose(lo, ref.lower, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1023, 1024, 5000])
def test_mid_size_torch_input_takes_the_table_route(n, monkeypatch):
    # Below 32768 tokens NumPy keeps its early-exit solver, but torch (no early exit
    # without a host read: a fixed 100 iterations, ~60 ms per 1000 tokens on CPU)
    # starts from the table from 1024 tokens on; the same values either way.
    from bandtheory import bounds as bounds_module

    rng = np.random.default_rng(n)
    logp = np.concatenate([rng.uniform(np.log(1e-300), 0.0, n - 3), [0.0, -np.inf, -1e-300]])
    ref = band_bounds(logp, "kl", delta=0.043)
    calls = []
    solve = bounds_module._solve_side
    monkeypatch.setattr(bounds_module, "_solve_side",
                        lambda *a, **k: calls.append(1) or solve(*a, **k))
    got = band_bounds(torch.tensor(logp), "kl", delta=0.043, check_input=False)
    assert bool(calls) == (n < 1024)  # the bracketing solver runs only below 1024
    finite = np.isfinite(ref.upper)
    np.testing.assert_array_equal(np.isinf(got.upper.numpy()), ~finite)
    np.testing.assert_allclose(got.upper.numpy()[finite], ref.upper[finite], rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.lower.numpy(), ref.lower, rtol=0, atol=1e-12)


def test_fast_mode_layouts_agree():
    # torch evaluates the table row by row on one CPU thread and from packed rows on
    # several threads (or an accelerator): the same polynomials, the same values.
    from bandtheory import fast

    rng = np.random.default_rng(5)
    x = torch.tensor(np.concatenate([rng.uniform(np.log(1e-300), 0.0, 70_000), [np.nan, 1.0]]))
    threads = torch.get_num_threads()
    out = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            import array_api_compat.torch as xp

            coefs = fast._coefficients(xp, fast.band_table("kl", delta=0.05), x)
            assert isinstance(coefs, fast._Packed) == (n > 1)
            out[n] = band_bounds(x, "kl", delta=0.05, mode="fast", check_input=False)
    finally:
        torch.set_num_threads(threads)
    for side in ("lower", "upper"):
        a, b = getattr(out[1], side).numpy(), getattr(out[2], side).numpy()
        assert np.all(np.isnan(a[-2:])) and np.all(np.isnan(b[-2:]))
        np.testing.assert_allclose(a[:-2], b[:-2], rtol=1e-14, atol=1e-300)
    # Against NumPy's route: another exp (upper = 1 + e^V, V up to ~700 here: ~1e-13)
    ref = band_bounds(x.numpy()[:-2], "kl", delta=0.05, mode="fast")
    np.testing.assert_allclose(out[2].upper.numpy()[:-2], ref.upper, rtol=1e-12)
    np.testing.assert_allclose(out[2].lower.numpy()[:-2], ref.lower, rtol=1e-12, atol=1e-300)


def test_torch_validation_errors():
    with pytest.raises(ValueError, match="NaN"):
        band_bounds(torch.tensor([float("nan"), -1.0]))
    with pytest.raises(ValueError, match="positive"):
        band_bounds(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="floating"):
        band_bounds(torch.tensor([-1, -2]))


def _bad_log_probs(n, seed):
    """Random log-probs with NaN, +inf, positive and edge entries; the invalid mask."""
    rng = np.random.default_rng(seed)
    logp = rng.uniform(np.log(1e-10), 0.0, n)
    bad = np.array([np.nan, np.inf, 0.5, 1e-3])
    edges = np.array([-np.inf, 0.0, -1e-300, -800.0])
    where = rng.choice(n, bad.size + edges.size, replace=False)
    logp[where] = np.concatenate([bad, edges])
    invalid = np.zeros(n, dtype=bool)
    invalid[where[:bad.size]] = True
    return logp, invalid


SYNCS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "__array__")


def test_no_host_sync_in_hot_path_with_check_input_false(monkeypatch):
    # Any host read of a tensor value in the hot path would raise here: band_bounds in
    # both modes, exact mode from a cached fast table, from its own start table (built
    # here) and with the safeguarded solver where no start table certifies (from 32768
    # tokens on), and the biting end; invalid entries included (they must become NaN by
    # arithmetic, not by a branch).
    from bandtheory import fast
    from bandtheory.fast import band_table, biting_bound

    band_table("kl", delta=0.05)  # exact mode at delta 0.05 starts from this table
    logp, invalid = _bad_log_probs(1 << 15, seed=9)
    x = torch.tensor(logp)
    positive = torch.from_numpy(np.arange(logp.size) % 3 == 0)
    small = x[:500]

    def forbid(*args, **kwargs):
        raise AssertionError("host synchronisation in the hot path")

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, forbid)
    out = {}
    for mode in ("exact", "fast"):
        out[mode] = band_bounds(x, "kl", delta=0.05, check_input=False, mode=mode)
        out[mode + "-small"] = band_bounds(small, "kl", delta=0.05, check_input=False, mode=mode)
    # delta 0.0117: no fast table, so exact mode builds its start table (NumPy, host
    # side: nothing read from the tensor) and takes the certified fixed Newton steps
    out["exact-no-table"] = band_bounds(x, "kl", delta=0.0117, check_input=False)
    # delta 0.0119: no start table certifies, so the fixed-iteration safeguarded solver
    monkeypatch.setattr(fast, "POLISH_TOLERANCE", -1.0)
    out["exact-solver"] = band_bounds(x, "kl", delta=0.0119, check_input=False)
    bite = biting_bound(x, positive, "kl", delta=0.05, check_input=False)
    bite_small = biting_bound(small, positive[:500], "kl", delta=0.05, check_input=False)
    monkeypatch.undo()

    for band in out.values():
        n = band.lower.shape[0]
        assert bool(torch.isnan(band.lower).numpy()[invalid[:n]].all())
        assert bool(torch.isnan(band.upper).numpy()[invalid[:n]].all())
        assert not bool(torch.isnan(band.lower).numpy()[~invalid[:n]].any())
    assert fast._start_table(divergences.get("kl"), 0.0117) is not None
    assert fast._start_table(divergences.get("kl"), 0.0119) is None
    for key, delta in (("exact-no-table", 0.0117), ("exact-solver", 0.0119)):
        ref = band_bounds(logp[~invalid][:3000], "kl", delta=delta)
        got = out[key]
        np.testing.assert_allclose(got.upper.numpy()[~invalid][:3000], ref.upper, rtol=1e-12)
        np.testing.assert_allclose(got.lower.numpy()[~invalid][:3000], ref.lower, rtol=0,
                                   atol=1e-12)
    fast = out["fast"]
    expected = torch.where(positive, fast.upper, fast.lower).numpy()
    assert np.all(np.isnan(bite.numpy()[invalid]))
    # The same polynomials, gathered and summed in another order: equal to rounding.
    np.testing.assert_allclose(bite.numpy()[~invalid], expected[~invalid], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bite_small.numpy(), expected[:500], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_invalid_torch_entries_give_nan_and_match_numpy(mode, dtype):
    from bandtheory.fast import band_table, biting_bound

    band_table("kl", delta=0.05)
    logp, invalid = _bad_log_probs(1 << 15, seed=10)
    tdtype = getattr(torch, dtype)
    x = torch.tensor(logp, dtype=tdtype)
    band = band_bounds(x, "kl", delta=0.05, check_input=False, mode=mode)
    ref = band_bounds(x.numpy(), "kl", delta=0.05, check_input=False, mode=mode)  # NumPy route
    for got, want in ((band.lower, ref.lower), (band.upper, ref.upper)):
        assert got.dtype == tdtype
        got = got.numpy()
        assert np.all(np.isnan(got[invalid])) and np.all(np.isnan(want[invalid]))
        rtol = 1e-6 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got[~invalid], want[~invalid], rtol=rtol)
    positive = torch.from_numpy(np.arange(logp.size) % 2 == 1)
    bite = biting_bound(x, positive, "kl", delta=0.05, check_input=False).numpy()
    assert np.all(np.isnan(bite[invalid])) and not np.any(np.isnan(bite[~invalid]))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_biting_bound_torch_large_chunked(dtype):
    # More than one chunk, torch in, torch out; against the exact NumPy Band.
    from bandtheory.fast import TOLERANCE, biting_bound

    rng = np.random.default_rng(4)
    logp = rng.uniform(np.log(1e-8), 0.0, 150_000)
    positive = rng.random(logp.size) < 0.5
    tdtype = getattr(torch, dtype)
    x = torch.tensor(logp, dtype=tdtype)
    got = biting_bound(x, torch.from_numpy(positive), "kl", delta=0.05)
    assert isinstance(got, torch.Tensor) and got.dtype == tdtype and got.shape == x.shape
    exact = band_bounds(x.double().numpy(), "kl", delta=0.05)
    got = got.double().numpy()
    tol = TOLERANCE if dtype == "float64" else TOLERANCE + 6e-8  # + float32 rounding
    # Relative error for upper (A > 0), absolute for lower (A <= 0): the certificate's terms.
    np.testing.assert_allclose(got[positive], exact.upper[positive], rtol=tol, atol=0)
    np.testing.assert_allclose(got[~positive], exact.lower[~positive], rtol=0, atol=tol)
