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
    loss, metrics = policy_loss(t, torch.zeros((0, 5)), torch.zeros((0, 5)),
                                agg="seq-mean-token-mean")
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics == {} and t.grad.shape == (0, 5)


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


# --------------------------------------------------------------------------------------
# Half precision: computed in float32, compared with float64 on the same rounded inputs
# --------------------------------------------------------------------------------------


def _tokens(n, seed=5):
    """Realistic tokens (most p near 1, a tail down to 1e-8); the new log-probs are
    reflected at 0 rather than clamped, so that no ratio ties with a saturated bound
    ``1/p`` (a tie flips on a rounding change and would test rounding, not accuracy)."""
    rng = np.random.default_rng(seed)
    old = np.where(rng.random(n) < 0.9, -rng.exponential(0.05, n),
                   rng.uniform(np.log(1e-8), 0.0, n))
    new = -np.abs(old + rng.normal(0.0, 0.1, n))
    adv = rng.normal(size=n)
    mask = rng.random(n) < 0.9
    return new, old, adv, mask


_HALF_SCHEMES = [schemes.clip(), schemes.band("kl", delta=0.05, mode="fast"),
                 schemes.dual_clip(schemes.band("kl", delta=0.05), c=1.5)]


@pytest.mark.parametrize("scheme", _HALF_SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", ["torch.bfloat16", "torch.float16", "numpy.float16"])
def test_half_precision_matches_float64_on_the_same_rounded_inputs(dtype, masked, scheme):
    # 200,000 tokens: float16 counts and sums overflow at 65504, the float16 failure mode.
    n = 200_000
    new, old, adv, mask = _tokens(n)
    mask = mask if masked else None
    lib, name = dtype.split(".")
    if lib == "torch":
        dt = getattr(torch, name)
        half = [torch.tensor(a, dtype=dt) for a in (new, old, adv)]
        ref = [h.double() for h in half]
        m_half = m_ref = None if mask is None else torch.tensor(mask)
        half[0].requires_grad_(True)
        ref[0].requires_grad_(True)
        eps = torch.finfo(dt).eps
    else:
        half = [a.astype(np.float16) for a in (new, old, adv)]
        ref = [h.astype(np.float64) for h in half]
        m_half = m_ref = mask
    loss, metrics = policy_loss(*half, scheme=scheme, response_mask=m_half)
    loss64, metrics64 = policy_loss(*ref, scheme=scheme, response_mask=m_ref)
    if lib == "torch":
        assert loss.dtype == dt
        # Returned in the input dtype: within one unit of its last place of the float64 loss.
        value, value64 = float(loss.detach()), float(loss64.detach())
        assert abs(value - value64) <= eps * abs(value64)
        loss.backward()
        loss64.backward()
        assert half[0].grad.dtype == dt
        g, g64 = half[0].grad.double().numpy(), ref[0].grad.numpy()
        # Per-token gradients are ~1/n: float16 holds them as subnormals, whose spacing
        # (eps * tiny = 2^-24) is the absolute part of the rounding.
        close = np.isclose(g, g64, rtol=eps, atol=eps * torch.finfo(dt).tiny)
        # A token within float32 rounding (1e-7) of a bound may flip.
        assert close.mean() >= 1 - 1e-4
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics64 = {k: float(v) for k, v in metrics64.items()}
    else:
        assert loss == pytest.approx(loss64, rel=1e-5)  # a Python float from float32 work
    assert set(metrics) == set(metrics64)
    for key in ("clip_frac_upper", "clip_frac_lower", "clip_frac", "dual_clip_frac"):
        assert metrics[key] == pytest.approx(metrics64[key], abs=2e-5), key
    for key in ("ratio_mean", "ratio_max"):
        assert metrics[key] == pytest.approx(metrics64[key], rel=1e-6), key
    # approx_kl ~ 5e-3 is a difference of means ~ 1: float32 sums leave ~1e-7 absolute.
    assert metrics["approx_kl"] == pytest.approx(metrics64["approx_kl"], abs=1e-6)
    assert metrics64["approx_kl"] > 1e-3 and metrics64["clip_frac"] > 1e-3  # not vacuous


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_float16_sequence_aggregations_do_not_overflow(agg):
    # 100 sequences of 2000 tokens: 200,000 counted tokens, per-sequence sums of ~2000.
    new, old, adv, mask = (a.reshape(100, 2000) for a in _tokens(200_000, seed=6))
    half = [torch.tensor(a, dtype=torch.float16) for a in (new, old, adv)]
    loss, metrics = policy_loss(*half, response_mask=torch.tensor(mask), agg=agg)
    loss64, _ = policy_loss(*(h.double() for h in half), response_mask=torch.tensor(mask),
                            agg=agg)
    assert torch.isfinite(loss) and loss.dtype == torch.float16
    assert abs(float(loss) - float(loss64)) <= torch.finfo(torch.float16).eps * abs(float(loss64))
    assert all(bool(torch.isfinite(v)) for v in metrics.values())


# --------------------------------------------------------------------------------------
# Empty batches and bad input
# --------------------------------------------------------------------------------------


def _empty_inputs(kind, shape):
    if kind == "list":
        value = [] if shape == (0,) else [[]] * shape[0]  # lists cannot hold shape (0, 5)
        return [value, value, value], value
    if kind == "numpy":
        return [np.zeros(shape) for _ in range(3)], np.zeros(shape, dtype=bool)
    return [torch.zeros(shape) for _ in range(3)], torch.zeros(shape, dtype=torch.bool)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("kind, shape", [("list", (0,)), ("list", (3, 0)),
                                         *((k, s) for k in ("numpy", "torch")
                                           for s in ((0,), (0, 5), (3, 0)))], ids=str)
def test_every_empty_batch_gives_the_documented_zero_loss(kind, shape, masked, agg):
    inputs, mask = _empty_inputs(kind, shape)
    mask = mask if masked else None
    if kind == "torch":
        inputs[0].requires_grad_(True)
    loss, metrics = policy_loss(*inputs, response_mask=mask, agg=agg,
                                scheme=schemes.band("kl", delta=0.05))
    assert metrics == {}
    value, grad, metrics_g = policy_loss_and_grad(*inputs, response_mask=mask, agg=agg)
    assert metrics_g == {} and tuple(grad.shape) == shape
    if kind == "torch":
        assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float32
        loss.backward()  # connected to the graph: a training step runs unchanged
        assert float(loss.detach()) == 0.0 and tuple(inputs[0].grad.shape) == shape
    else:
        assert isinstance(loss, float) and loss == 0.0 and value == 0.0


def test_empty_batch_still_checks_shapes_and_types():
    with pytest.raises(ValueError, match="shape"):
        policy_loss(np.zeros((0,)), np.zeros((0, 5)), np.zeros((0,)))
    with pytest.raises(ValueError, match="shape"):
        policy_loss([], [], [], response_mask=np.zeros((0, 2), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        policy_loss(np.zeros((2, 0, 3)), np.zeros((2, 0, 3)), np.zeros((2, 0, 3)),
                    agg="seq-mean-token-mean")
    with pytest.raises(TypeError, match="floating"):
        policy_loss(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0))
    with pytest.raises(TypeError, match="response_mask is a numpy.ndarray"):
        policy_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), response_mask=np.zeros(0))


def test_mask_of_another_array_type_is_a_clear_error():
    new, old, adv, mask = _batch()
    t = [torch.tensor(a) for a in (new, old, adv)]
    for bad in (mask, mask.tolist()):
        with pytest.raises(TypeError, match=r"response_mask is a .* but the inputs are torch"
                                            r" arrays; pass numpy arrays \(or Python lists\) or"
                                            r" torch tensors") as info:
            policy_loss(*t, response_mask=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="but the inputs are numpy arrays"):
        policy_loss(new, old, adv, response_mask=torch.tensor(mask))
    # A list mask with numpy (or list) inputs is read as an array: same result as numpy.
    assert policy_loss(new, old, adv, response_mask=mask.tolist()) == \
        policy_loss(new, old, adv, response_mask=mask)
    assert policy_loss(new.tolist(), old.tolist(), adv.tolist(), response_mask=mask.tolist()) \
        == policy_loss(new, old, adv, response_mask=mask)
    # Integer (0/1) masks mean the same as boolean ones, in both libraries.
    assert policy_loss(new, old, adv, response_mask=mask.astype(np.int64)) == \
        policy_loss(new, old, adv, response_mask=mask)
    a, _ = policy_loss(*t, response_mask=torch.tensor(mask, dtype=torch.int32))
    b, _ = policy_loss(*t, response_mask=torch.tensor(mask))
    assert float(a) == float(b)


def _bad_cases():
    new, old, adv, mask = _batch()
    t = {k: torch.tensor(v) for k, v in (("new", new), ("old", old), ("adv", adv))}
    nan_at = np.where(np.arange(new.size).reshape(new.shape) == 7, np.nan, 1.0)
    return [
        # (id, args, kwargs, exception, message)
        ("nan-log_prob-torch", (t["new"] * torch.tensor(nan_at), t["old"], t["adv"]), {},
         ValueError, "log_prob contains NaN"),
        ("nan-old", (new, old * nan_at, adv), {}, ValueError, "old_log_prob contains NaN"),
        ("nan-adv", (new, old, adv * nan_at), {}, ValueError, "advantages contain NaN"),
        ("inf-old", (new, np.full_like(old, np.inf), adv), {}, ValueError,
         "old_log_prob is positive"),
        ("inf-adv", (new, old, np.where(mask, np.inf, adv)), {}, ValueError,
         "advantages contain NaN or inf"),
        ("positive-old-torch", (t["new"], t["old"] + 3.0, t["adv"]), {}, ValueError,
         "old_log_prob is positive"),
        ("-inf-old-unmasked", (new, np.where(mask, -np.inf, old), adv), {}, ValueError,
         "old_log_prob is -inf"),
        ("shape-adv", (new, old, adv[:, :2]), {}, ValueError, "advantages has shape"),
        ("shape-torch", (t["new"], t["old"][:2], t["adv"]), {}, ValueError,
         "old_log_prob has shape"),
        ("shape-mask-torch", (t["new"], t["old"], t["adv"]),
         {"response_mask": torch.tensor(mask)[:, :2]}, ValueError, "response_mask has shape"),
        ("int-old-torch", (t["new"], t["old"].long(), t["adv"]), {}, TypeError,
         "old_log_prob must have a real floating dtype"),
        ("int-adv-torch", (t["new"], t["old"], t["adv"].int()), {}, TypeError,
         "advantages must have a real floating dtype"),
        ("bool-log_prob-torch", (t["new"] < 0, t["old"], t["adv"]), {}, TypeError,
         "log_prob must have a real floating dtype"),
        ("int-numpy", (new.astype(np.int64), old, adv), {}, TypeError,
         "log_prob must have a real floating dtype"),
        ("mixed-types", (t["new"], old, t["adv"]), {}, TypeError, "mixed array types"),
        ("not-an-array", ("0.5", old, adv), {}, TypeError, "log_prob must be a float array"),
        ("ragged-list", ([[-1.0], [-1.0, -2.0]], old, adv), {}, ValueError,
         "could not be read as a float array"),
        ("device", (t["new"], t["old"].to("meta"), t["adv"]), {}, ValueError,
         "old_log_prob is on meta but log_prob is on cpu"),
        ("complex-mask", (new, old, adv), {"response_mask": mask.astype(complex)}, TypeError,
         "response_mask must be bool or real numbers"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_gives_a_clear_error(case):
    _, args, kwargs, exc, message = case
    with pytest.raises(exc, match=message) as info:
        policy_loss(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_values_on_masked_tokens_are_allowed():
    new, old, adv, mask = _batch()
    garbage = np.where(mask, old, -np.inf)
    loss, _ = policy_loss(new, garbage, np.where(mask, adv, np.nan), response_mask=mask)
    assert loss == policy_loss(new, old, adv, response_mask=mask)[0]


# --------------------------------------------------------------------------------------
# No host synchronisation with check_input=False
# --------------------------------------------------------------------------------------

_SYNCS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")

_SYNC_SCHEMES = {
    "clip": schemes.clip(),
    "clip_higher": schemes.clip_higher(eps_low=0.2, eps_high=0.28),
    "dual_clip": schemes.dual_clip(schemes.clip(), c=3.0),
    "dcpo": schemes.dcpo(),
    "band_exact": schemes.band("kl", delta=0.05),
    "band_fast": schemes.band("kl", delta=0.05, mode="fast"),
    "relax_band": schemes.relax(schemes.band("kl", delta=0.05)),
    "cap_band_fast": schemes.cap(schemes.band("kl", delta=0.05, mode="fast"), upper_max=3.0),
    "dual_band_fast": schemes.dual_clip(schemes.band("kl", delta=0.05, mode="fast"), c=2.0),
}


@pytest.fixture
def no_host_sync(monkeypatch):
    """Make every Tensor -> host conversion raise: a call that passes reads no value."""
    def sync(*args, **kwargs):
        raise AssertionError("host synchronisation")

    def install():
        for name in _SYNCS:
            monkeypatch.setattr(torch.Tensor, name, sync)
    return install


# 70,000 tokens: CPU chunks (65536) and exact mode's certified Newton path (>= 32768);
# only the Band's code path depends on the size.
_SYNC_CASES = [(name, 1_000) for name in _SYNC_SCHEMES] + [
    (name, 70_000) for name in _SYNC_SCHEMES if "band" in name]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name, n", _SYNC_CASES, ids=[f"{s}-{n}" for s, n in _SYNC_CASES])
def test_no_host_sync_with_check_input_false(name, n, masked, no_host_sync):
    scheme = _SYNC_SCHEMES[name]
    new, old, adv, mask = (a.reshape(-1, 100) for a in _tokens(n, seed=8))
    t = [torch.tensor(a, dtype=torch.float32) for a in (new, old, adv)]
    t[0].requires_grad_(True)
    m = torch.tensor(mask) if masked else None
    agg = "seq-mean-token-mean" if masked else "token-mean"
    no_host_sync()
    loss, metrics = policy_loss(*t, scheme=scheme, response_mask=m, agg=agg,
                                check_input=False)
    loss.backward()
    _, grad, _ = policy_loss_and_grad(*t, scheme=scheme, response_mask=m, agg=agg,
                                      check_input=False)
    # Metrics come back as 0-d tensors: reading them is the caller's (deferred) sync.
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
    assert isinstance(grad, torch.Tensor) and t[0].grad is not None


def test_no_host_sync_guard_catches_the_validation(no_host_sync):
    # The guard must be able to fail: check_input=True reads the values on the host.
    new, old, adv, _ = _batch()
    t = [torch.tensor(a) for a in (new, old, adv)]
    no_host_sync()
    with pytest.raises(AssertionError, match="host synchronisation"):
        policy_loss(*t, check_input=True)
