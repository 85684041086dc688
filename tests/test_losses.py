"""Surrogate losses: hand-derived values, gradients, reductions, metrics, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from bandtheory import policy_loss, schemes
from bandtheory.losses import policy_loss_and_grad

torch = pytest.importorskip("torch")


def _batch(seed=0, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    old = np.log(rng.uniform(0.01, 0.6, shape))
    new = np.minimum(old + rng.normal(0, 0.4, shape), 0.0)
    adv = rng.normal(size=shape)
    mask = rng.random(shape) < 0.8
    mask[:, 0] = True
    return new, old, adv, mask


def test_hand_derived_values_and_gradient():
    old = np.log(np.array([0.5, 0.5, 0.5, 0.5]))
    r = np.array([1.5, 0.5, 1.1, 0.5])
    adv = np.array([1.0, -1.0, 2.0, 1.0])
    new = old + np.log(r)
    loss, grad, metrics = policy_loss_and_grad(new, old, adv, scheme=schemes.clip(eps=0.2))
    # per token objective: min(rA, clip(r)A): 1.2, -0.8, 2.2, 0.5
    assert loss == pytest.approx(-(1.2 - 0.8 + 2.2 + 0.5) / 4, rel=1e-14)
    # active: tokens 2 (r inside) and 3 (A > 0, r < lower): d/dlogpi = -r A / 4
    np.testing.assert_allclose(grad, [0.0, 0.0, -2.2 / 4, -0.5 / 4], rtol=1e-14)
    assert metrics["clip_frac_upper"] == 0.25 and metrics["clip_frac_lower"] == 0.25
    assert metrics["ratio_max"] == pytest.approx(1.5)
    assert metrics["approx_kl"] == pytest.approx(np.mean(r - 1 - np.log(r)))


def test_dual_clip_value_and_fraction():
    old = np.log(np.array([0.2, 0.2]))
    r = np.array([4.0, 1.0])
    adv = np.array([-1.0, -1.0])
    loss, grad, metrics = policy_loss_and_grad(old + np.log(r), old, adv,
                                               scheme=schemes.dual_clip(schemes.clip(), c=3.0))
    assert loss == pytest.approx(-(-3.0 - 1.0) / 2)
    assert grad[0] == 0.0 and grad[1] == pytest.approx(0.5)
    assert metrics["dual_clip_frac"] == 0.5
    loss_c, _ = policy_loss(old + np.log(r), old, adv, scheme=schemes.clip(), c=3.0)
    assert loss_c == loss


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("scheme", [schemes.clip(), schemes.band("kl", delta=0.05, mode="fast"),
                                    schemes.dual_clip(schemes.dcpo(), c=2.0)], ids=lambda s: s.name)
def test_autograd_equals_closed_form_and_finite_differences(agg, scheme):
    new, old, adv, mask = _batch()
    t = torch.tensor(new, requires_grad=True)
    loss, _ = policy_loss(t, torch.tensor(old), torch.tensor(adv), scheme=scheme,
                          response_mask=torch.tensor(mask), agg=agg)
    loss.backward()
    value, grad, _ = policy_loss_and_grad(new, old, adv, scheme=scheme, response_mask=mask, agg=agg)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), grad, rtol=1e-10, atol=1e-15)
    h = 1e-7
    for idx in [(0, 0), (1, 2), (3, 5)]:
        plus, minus = new.copy(), new.copy()
        plus[idx] -= h  # stay <= 0
        minus[idx] -= 2 * h
        fd = (policy_loss(plus, old, adv, scheme=scheme, response_mask=mask, agg=agg)[0]
              - policy_loss(minus, old, adv, scheme=scheme, response_mask=mask, agg=agg)[0]) / h
        assert fd == pytest.approx(grad[idx], abs=1e-6)


def test_aggregations_by_hand():
    new, old, adv, mask = _batch(1)
    loss_tm, _ = policy_loss(new, old, adv, response_mask=mask, agg="token-mean")
    r = np.exp(new - old)
    obj = np.minimum(r * adv, np.clip(r, 0.8, 1.2) * adv)
    tok = -obj * mask
    assert loss_tm == pytest.approx(tok.sum() / mask.sum(), rel=1e-12)
    loss_smtm, _ = policy_loss(new, old, adv, response_mask=mask, agg="seq-mean-token-mean")
    assert loss_smtm == pytest.approx(np.mean(tok.sum(1) / mask.sum(1)), rel=1e-12)
    loss_smts, _ = policy_loss(new, old, adv, response_mask=mask, agg="seq-mean-token-sum")
    assert loss_smts == pytest.approx(np.mean(tok.sum(1)), rel=1e-12)


def test_reductions_between_schemes():
    new, old, adv, _ = _batch(2)
    a, _ = policy_loss(new, old, adv, scheme=schemes.clip_higher(eps_low=0.2, eps_high=0.2))
    b, _ = policy_loss(new, old, adv, scheme=schemes.clip(eps=0.2))
    assert a == b
    # A huge delta saturates the Band ([0, 1/p]); capping at 1.2 gives clip's upper side,
    # and the lower side never binds once relaxed... so compare positive advantages only.
    pos = np.abs(adv)
    huge = schemes.cap(schemes.band("tv", delta=1.0), upper_max=1.2)
    c, _ = policy_loss(new, old, pos, scheme=huge)
    d, _ = policy_loss(new, old, pos, scheme=schemes.clip_higher(eps_low=1.0, eps_high=0.2))
    assert c == pytest.approx(d, rel=1e-14)


def test_masked_garbage_is_ignored_and_metrics_masked():
    new, old, adv, mask = _batch(3)
    dirty_new, dirty_old = new.copy(), old.copy()
    dirty_new[~mask] = np.nan
    dirty_old[~mask] = np.inf
    a, ma = policy_loss(new, old, adv, response_mask=mask)
    b, mb = policy_loss(dirty_new, dirty_old, adv, response_mask=mask)
    assert a == b and ma == mb
    r = np.exp(new - old)[mask]
    assert ma["ratio_mean"] == pytest.approx(r.mean()) and ma["ratio_max"] == pytest.approx(r.max())
    up = (adv[mask] > 0) & (r > 1.2)
    assert ma["clip_frac_upper"] == pytest.approx(up.mean())


def test_bad_input():
    new, old, adv, mask = _batch()
    with pytest.raises(ValueError, match="NaN"):
        policy_loss(np.where(mask, np.nan, new), old, adv)
    with pytest.raises(ValueError, match="positive"):
        policy_loss(new + 5.0, old, adv)
    with pytest.raises(ValueError, match="positive"):
        policy_loss(np.full_like(new, np.inf), old, adv)
    with pytest.raises(ValueError, match="shape"):
        policy_loss(new, old[:, :3], adv)
    with pytest.raises(ValueError, match="shape"):
        policy_loss(new, old, adv, response_mask=mask[:2])
    with pytest.raises(TypeError, match="floating"):
        policy_loss(torch.zeros(3, dtype=torch.int64), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="unknown agg"):
        policy_loss(new, old, adv, agg="mean")
    with pytest.raises(ValueError, match="2-D"):
        policy_loss(new[0], old[0], adv[0], agg="seq-mean-token-sum")
    with pytest.raises(ValueError, match="c must"):
        policy_loss(new, old, adv, c=0.5)


def test_empty_batch_gives_zero_loss_and_empty_metrics():
    loss, metrics = policy_loss(np.zeros((0,)), np.zeros((0,)), np.zeros((0,)))
    assert loss == 0.0 and metrics == {}
    t = torch.zeros((0, 5), requires_grad=True)
    loss, metrics = policy_loss(t, torch.zeros((0, 5)), torch.zeros((0, 5)), agg="seq-mean-token-mean")
    loss.backward()
    assert float(loss) == 0.0 and metrics == {} and t.grad.shape == (0, 5)


def test_all_masked_gives_zero():
    new, old, adv, mask = _batch()
    loss, metrics = policy_loss(new, old, adv, response_mask=np.zeros_like(mask))
    assert loss == 0.0 and metrics["clip_frac"] == 0.0


def test_torch_float32_returns_tensors_on_device():
    new, old, adv, mask = _batch()
    t = torch.tensor(new, dtype=torch.float32, requires_grad=True)
    loss, metrics = policy_loss(t, torch.tensor(old, dtype=torch.float32),
                                torch.tensor(adv, dtype=torch.float32),
                                scheme=schemes.band("kl", delta=0.05), check_input=False)
    assert loss.dtype == torch.float32 and loss.requires_grad
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("c", [None, 3.0])
def test_band_loss_equals_the_textbook_formula_with_exact_bounds(mode, c):
    # The Band loss evaluates only the biting end; compare with the two-sided textbook
    # formula min(rA, clip(r, lower, upper) A) on exact bounds, metrics included.
    from bandtheory import band_bounds

    rng = np.random.default_rng(21)
    n = 50_000  # more than one chunk of the fast path
    old = np.log(rng.uniform(1e-7, 1.0, n))
    # Reflected, not clamped at 0: a clamped p_new = 1 gives r = 1/p, which ties with an
    # upper bound that equals 1/p to rounding (KL, p > 0.998) and flips on a 1e-13 change.
    new = -np.abs(old + rng.normal(0, 0.3, n))
    adv = np.where(rng.random(n) < 0.1, 0.0, rng.normal(size=n))
    scheme = schemes.band("kl", delta=0.05, mode=mode)
    if c is not None:
        scheme = schemes.dual_clip(scheme, c=c)
    loss, grad, metrics = policy_loss_and_grad(new, old, adv, scheme=scheme)
    band = band_bounds(old, "kl", delta=0.05)
    r = np.exp(new - old)
    obj = np.minimum(r * adv, np.clip(r, band.lower, band.upper) * adv)
    hit_up = (adv > 0) & (r > band.upper)
    hit_lo = (adv < 0) & (r < band.lower)
    active = ~(hit_up | hit_lo)
    if c is not None:
        dual = (adv < 0) & (obj < c * adv)
        obj = np.where(adv < 0, np.maximum(obj, c * adv), obj)
        active &= ~dual
        assert metrics["dual_clip_frac"] == pytest.approx(dual.mean(), abs=1e-4)
    assert loss == pytest.approx(-obj.mean(), rel=1e-7)
    assert metrics["clip_frac_upper"] == pytest.approx(hit_up.mean(), abs=1e-4)
    assert metrics["clip_frac_lower"] == pytest.approx(hit_lo.mean(), abs=1e-4)
    np.testing.assert_allclose(grad, -r * adv * active / n, rtol=1e-12,
                               atol=1e-4 / n)  # a token within 1e-7 of an edge may flip
