"""torch support: same dtype/device/shape out, numbers equal to NumPy's, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bandtheory import band_bounds, schemes

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
    rng = np.random.default_rng(2)
    logp = rng.uniform(np.log(1e-8), 0.0, 3 << 15)  # several chunks
    got = band_bounds(torch.tensor(logp), name, delta=0.05, check_input=False)
    ref = band_bounds(logp[:2000], name, delta=0.05)
    np.testing.assert_allclose(got.upper.numpy()[:2000], ref.upper, rtol=1e-12)
    np.testing.assert_allclose(got.lower.numpy()[:2000], ref.lower, rtol=0, atol=1e-12)


def test_torch_validation_errors():
    with pytest.raises(ValueError, match="NaN"):
        band_bounds(torch.tensor([float("nan"), -1.0]))
    with pytest.raises(ValueError, match="positive"):
        band_bounds(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="floating"):
        band_bounds(torch.tensor([-1, -2]))


def test_no_host_sync_in_hot_path_with_check_input_false(monkeypatch):
    # Any .item()/bool() on a tensor in the hot path would raise here.
    x = torch.tensor(np.log(np.geomspace(1e-8, 1.0, 1 << 15)))

    def forbid(*args, **kwargs):
        raise AssertionError("host synchronisation in the hot path")

    monkeypatch.setattr(torch.Tensor, "item", forbid)
    monkeypatch.setattr(torch.Tensor, "__bool__", forbid)
    for mode in ("exact", "fast"):
        band_bounds(x, "kl", delta=0.05, check_input=False, mode=mode)


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
