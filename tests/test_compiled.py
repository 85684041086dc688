"""``mode="compiled"``: fast mode's certified table evaluated by a ``torch.compile`` kernel.

The first call per dtype compiles (seconds; torch keeps the kernels in its on-disk cache,
so later runs load them), hence the ``slow`` mark: these tests run in CI.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bandtheory import band_bounds, divergences, fast, policy_loss, schemes
from bandtheory.fast import TOLERANCE, CompileFallbackWarning, biting_bound

from ._reference import band_mp

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

NAMES = ["kl", "chi2", "tv", "hellinger", "alpha(2)"]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(autouse=True)
def _compile_state():
    """Every test starts and ends with compilation allowed (a simulated failure in one
    test must not leak into the next)."""
    fast._COMPILE_FAILED.clear()
    yield
    fast._COMPILE_FAILED.clear()


@pytest.mark.parametrize("name", NAMES)
def test_compiled_matches_mpmath_within_the_certificate(name):
    # Independent 50-digit references at log-spaced p from 1e-8 to 1 - 1e-9.
    log_p = np.concatenate([np.linspace(np.log(1e-8), np.log(0.5), 9),
                            np.log1p(-np.array([0.3, 1e-2, 1e-5, 1e-9]))])
    x = torch.tensor(log_p, dtype=torch.float64)
    band = band_bounds(x, name, delta=0.1, mode="compiled")
    assert isinstance(band.lower, torch.Tensor) and band.lower.dtype == torch.float64
    for i, t in enumerate(log_p):
        lo, up = band_mp(name, float(t), 0.1)
        assert abs(band.lower[i].item() - float(lo)) <= TOLERANCE, (name, t)
        assert abs(band.upper[i].item() / float(up) - 1.0) <= TOLERANCE, (name, t)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_compiled_equals_fast_mode_in_every_dtype_and_shape(dtype):
    rng = np.random.default_rng(3)
    logp = rng.uniform(np.log(1e-8), 0.0, (37, 53))
    logp[0, :4] = [0.0, -np.inf, -1e-300, -800.0]
    tdtype = getattr(torch, dtype)
    x = torch.tensor(logp, dtype=tdtype)
    got = band_bounds(x, "kl", delta=0.05, mode="compiled")
    want = band_bounds(x, "kl", delta=0.05, mode="fast")
    for g, w in ((got.lower, want.lower), (got.upper, want.upper)):
        assert g.dtype == tdtype and g.shape == x.shape and g.device == x.device
        # The same polynomials; the compiled loop may round an operation differently
        # (vectorised exp / log): a few ulps of float64, then the input dtype's rounding.
        np.testing.assert_allclose(g.double().numpy(), w.double().numpy(), rtol=1e-12, atol=0)
    assert got.lower[0, 1].item() == 0.0 and got.upper[0, 1].item() == np.inf  # p = 0
    assert got.upper[0, 0].item() == 1.0  # p = 1


def test_invalid_entries_give_nan_without_a_branch():
    logp = np.log(np.linspace(0.01, 0.99, 40))
    logp[[3, 7, 11, 19]] = [np.nan, np.inf, 0.5, 1e-3]
    x = torch.tensor(logp)
    band = band_bounds(x, "kl", delta=0.05, mode="compiled", check_input=False)
    bad = np.zeros(40, dtype=bool)
    bad[[3, 7, 11, 19]] = True
    assert np.isnan(band.lower.numpy()[bad]).all() and np.isnan(band.upper.numpy()[bad]).all()
    assert not np.isnan(band.lower.numpy()[~bad]).any()
    with pytest.raises(ValueError, match="NaN"):
        band_bounds(x, "kl", delta=0.05, mode="compiled")  # validation as in every mode


def test_one_kernel_for_every_size_and_table():
    # Dynamic shapes and the table's numbers as arguments: a new batch size, a new delta
    # or a new divergence (same degree) reuses the kernel; a slice (a view) does too.
    x = torch.linspace(-18.0, 0.0, 100_000, dtype=torch.float64)
    band_bounds(x, "kl", delta=0.05, mode="compiled")
    before = _graphs()
    for n in (1_000, 77_777, 2, 3):
        band_bounds(x[:n], "kl", delta=0.05, mode="compiled")
    for name, delta in (("kl", 0.1), ("kl", 0.3), ("chi2", 0.05), ("tv", 0.2)):
        assert fast.band_table(name, delta=delta).degree == fast.band_table("kl", delta=0.05).degree
        band_bounds(x, name, delta=delta, mode="compiled")
    assert _graphs() == before


def test_outputs_carry_no_gradient_and_inputs_with_one_work():
    x = torch.linspace(-10.0, -0.01, 1000, dtype=torch.float64, requires_grad=True)
    band = band_bounds(x, "kl", delta=0.05, mode="compiled")
    assert not band.upper.requires_grad and not band.lower.requires_grad
    want = band_bounds(x.detach(), "kl", delta=0.05, mode="fast")
    np.testing.assert_allclose(band.upper.numpy(), want.upper.numpy(), rtol=1e-12)


def test_numpy_and_tiny_inputs_are_evaluated_as_in_fast_mode():
    logp = np.log(np.array([1e-6, 0.2, 0.9]))
    got = band_bounds(logp, "kl", delta=0.05, mode="compiled")
    want = band_bounds(logp, "kl", delta=0.05, mode="fast")
    assert isinstance(got.upper, np.ndarray)
    np.testing.assert_array_equal(got.upper, want.upper)
    one = band_bounds(torch.tensor([-0.5]), "kl", delta=0.05, mode="compiled")
    np.testing.assert_array_equal(one.upper.numpy(),
                                  band_bounds(torch.tensor([-0.5]), "kl", delta=0.05,
                                              mode="fast").upper.numpy())
    empty = band_bounds(torch.empty(0), "kl", delta=0.05, mode="compiled")
    assert empty.upper.shape == (0,)


def test_no_certified_table_gives_the_exact_values():
    # reverse KL does not certify (see bandtheory.fast): exact mode's values, warned.
    x = torch.tensor(np.log([1e-4, 0.3, 0.9]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fast.TableFallbackWarning)
        got = band_bounds(x, "reverse_kl", delta=0.05, mode="compiled")
    want = band_bounds(x.numpy(), "reverse_kl", delta=0.05)
    np.testing.assert_allclose(got.upper.numpy(), want.upper, rtol=1e-12)


def test_biting_bound_compiled_equals_eager():
    rng = np.random.default_rng(5)
    logp = rng.uniform(np.log(1e-8), 0.0, 200_000)
    positive = torch.from_numpy(rng.random(logp.size) < 0.5)
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(logp, dtype=dtype)
        got = biting_bound(x, positive, "kl", delta=0.05, compiled=True, check_input=False)
        want = biting_bound(x, positive, "kl", delta=0.05, check_input=False)
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_allclose(got.double().numpy(), want.double().numpy(), rtol=1e-12)


def test_no_host_sync_once_compiled(monkeypatch):
    x = torch.tensor(np.log(np.linspace(1e-6, 1.0, 5000)))
    positive = torch.from_numpy(np.arange(5000) % 2 == 0)
    band_bounds(x, "kl", delta=0.05, mode="compiled", check_input=False)  # compile first
    biting_bound(x, positive, "kl", delta=0.05, compiled=True, check_input=False)

    def forbid(*args, **kwargs):
        raise AssertionError("host synchronisation in the hot path")

    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy",
                 "__array__"):
        monkeypatch.setattr(torch.Tensor, name, forbid)
    band = band_bounds(x, "kl", delta=0.05, mode="compiled", check_input=False)
    bite = biting_bound(x, positive, "kl", delta=0.05, compiled=True, check_input=False)
    monkeypatch.undo()
    assert not fast._COMPILE_FAILED  # the compiled kernel ran, not the fallback
    np.testing.assert_allclose(bite.numpy(), torch.where(positive, band.upper, band.lower).numpy(),
                               rtol=1e-12)


def test_a_compiler_failure_falls_back_with_one_warning(monkeypatch):
    def broken(name):
        def fn(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore text")
        return fn

    monkeypatch.setattr(fast, "_compiled", broken)
    x = torch.tensor(np.log(np.linspace(0.01, 0.99, 100)))
    with pytest.warns(CompileFallbackWarning, match="could not compile for cpu tensors "
                      r"\(RuntimeError: InvalidCxxCompiler: No working C\+\+ compiler found\)"):
        got = band_bounds(x, "kl", delta=0.05, mode="compiled")
    want = band_bounds(x, "kl", delta=0.05, mode="fast")
    np.testing.assert_array_equal(got.upper.numpy(), want.upper.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device type: no second warning
        again = band_bounds(x, "kl", delta=0.05, mode="compiled")
        bite = biting_bound(x, x > -1.0, "kl", delta=0.05, compiled=True)
    np.testing.assert_array_equal(again.lower.numpy(), want.lower.numpy())
    np.testing.assert_allclose(bite.numpy(), torch.where(x > -1.0, want.upper,
                                                         want.lower).numpy(), rtol=1e-12)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_policy_loss_with_a_compiled_band_equals_fast(agg):
    rng = np.random.default_rng(8)
    old = torch.tensor(np.log(rng.uniform(1e-6, 1.0, (16, 64))), dtype=torch.float32)
    new = (old + torch.tensor(rng.normal(0, 0.3, (16, 64)), dtype=torch.float32))
    new = new.clamp(max=0.0)
    adv = torch.tensor(rng.normal(0, 1, (16, 64)), dtype=torch.float32)
    mask = torch.from_numpy(rng.random((16, 64)) < 0.9)
    out = {}
    for mode in ("fast", "compiled"):
        lp = new.clone().requires_grad_(True)
        loss, metrics = policy_loss(lp, old, adv, scheme=schemes.band("kl", delta=0.05, mode=mode),
                                    response_mask=mask, agg=agg)
        loss.backward()
        out[mode] = (loss.item(), lp.grad.clone(), {k: float(v) for k, v in metrics.items()})
    assert out["compiled"][0] == pytest.approx(out["fast"][0], rel=1e-6)
    np.testing.assert_allclose(out["compiled"][1].numpy(), out["fast"][1].numpy(), rtol=1e-5,
                               atol=1e-9)
    assert out["compiled"][2] == pytest.approx(out["fast"][2], rel=1e-6)


def test_mode_is_validated_everywhere():
    with pytest.raises(ValueError, match="exact, fast, compiled"):
        band_bounds(np.log([0.5]), "kl", mode="compile")
    with pytest.raises(ValueError, match="exact, fast, compiled"):
        schemes.band("kl", mode="jit")
    assert schemes.band("kl", mode="compiled").mode == "compiled"
    assert divergences.get("kl") is schemes.band("kl", mode="compiled").divergence


def test_a_cubic_table_compiles_and_stays_within_the_certificate(monkeypatch):
    # The registry's tables are quadratic at the usual radii; force a cubic one (a new
    # delta, so nothing cached) to run the degree-3 Horner loop through the compiler.
    monkeypatch.setattr(fast, "_SPECS", ((3, 1.0 / 16.0),))
    table = fast.band_table("chi2", delta=0.0731)
    assert table.degree == 3
    logp = np.linspace(np.log(1e-8), -1e-6, 4001)
    got = band_bounds(torch.tensor(logp), "chi2", delta=0.0731, mode="compiled")
    exact = band_bounds(logp, "chi2", delta=0.0731)
    np.testing.assert_allclose(got.upper.numpy(), exact.upper, rtol=TOLERANCE, atol=0)
    np.testing.assert_allclose(got.lower.numpy(), exact.lower, rtol=0, atol=TOLERANCE)
    assert not fast._COMPILE_FAILED
