"""The training loop of the lab: GRPO-style updates of a tabular softmax policy.

For every step, with the current policy as ``pi_old``:

1. sample a group of ``G`` completions per seed (inverse CDF on uniforms drawn from the
   seed's own generator, so every scheme sees the same random numbers);
2. group-normalised advantages ``A_i = (R_i - mean(R)) / (std(R) + 1e-8)``, shared by all
   tokens of completion ``i``;
3. the scheme's ratio bounds of every sampled token (they depend on ``pi_old`` only, so
   they are computed once per step);
4. ``epochs`` passes over the group in ``minibatches`` shuffled minibatches; each
   minibatch is one Adam step on the logits of the loss
   :func:`bandtheory.losses.policy_loss` (token mean), optionally minus an entropy bonus
   and plus an exact KL penalty to the initial policy. After the first minibatch the
   ratio ``pi / pi_old`` differs from 1 and the scheme's bounds matter.

Seeds run side by side as a batch axis; each seed has its own generator, loss and Adam
moments (Adam is elementwise, the loss of a seed involves only its own logits), so a
seed's trajectory does not depend on which other seeds run with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import divergences as _div
from .. import schemes as _schemes
from ..bounds import Band
from .envs import Bandit, Sequence as SequenceEnv, _check_int, _check_real, entropy, mass_count

__all__ = [
    "TrainConfig",
    "SchemeSpec",
    "NoClip",
    "DEFAULT_SCHEMES",
    "METRICS",
    "parse_scheme",
    "resolve_schemes",
    "make_env",
    "clip_fractions",
    "run",
]

#: The default comparison (issue 8): canonical clip, Clip-Higher, DCPO, three Bands at
#: ``delta = 0.05`` and no clipping.
DEFAULT_SCHEMES: tuple[str, ...] = (
    "clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2", "none",
)

#: Columns of the per-step table besides ``env, scheme, label, seed, step``.
METRICS: tuple[str, ...] = (
    "entropy",         # per-token entropy of pi (nats), visitation-weighted
    "p_best",          # probability of the best token / trajectory
    "reward",          # exact expected return of pi
    "batch_reward",    # mean sampled return of the group (drawn from pi_old)
    "clip_upper_pos",  # mean over the step's E x M minibatches of the fraction of the
                       # minibatch's tokens with A > 0 and r > upper
    "clip_lower_neg",  # the same with A < 0 and r < lower
    "kl",              # KL(pi_old || pi) of the step's update, per token
    "n99",             # distinct tokens holding 99% of the mass (visitation-weighted)
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the GRPO-style loop.

    Args:
        steps: Number of steps (groups), ``>= 0``.
        group: Completions per group ``G``, ``>= 2`` (advantages need a spread).
        epochs: Passes over each group, ``>= 1``.
        minibatches: Minibatches per pass, ``>= 1``, dividing ``group``.
        lr: Adam learning rate on the logits, ``> 0``.
        beta1: Adam first-moment decay in ``[0, 1)``.
        beta2: Adam second-moment decay in ``[0, 1)``.
        adam_eps: Adam's denominator guard, ``> 0``. The default ``1e-3`` (not the usual
            ``1e-8``) keeps Adam from blowing the tiny softmax-normalisation gradients
            of never-sampled tail logits up to full ``lr``-sized random steps, which a
            tabular policy would otherwise suffer and a language model does not.
        entropy_coef: Weight of the entropy bonus (0 = off), ``>= 0``.
        kl_coef: Weight of the exact KL(pi || pi_init) penalty (0 = off), ``>= 0``.
    """

    steps: int = 150
    group: int = 16
    epochs: int = 4
    minibatches: int = 4
    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-3
    entropy_coef: float = 0.0
    kl_coef: float = 0.0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, minimum=0)
        _check_int("group", self.group, minimum=2,
                   why=" (group-normalised advantages need two completions)")
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("minibatches", self.minibatches, minimum=1)
        if self.group % self.minibatches:
            raise ValueError(f"minibatches must divide group, got group={self.group}, "
                             f"minibatches={self.minibatches}")
        _check_real("lr", self.lr, minimum=0.0, strict=True)
        for name in ("beta1", "beta2"):
            value = _check_real(name, getattr(self, name), minimum=0.0)
            if value >= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        _check_real("adam_eps", self.adam_eps, minimum=0.0, strict=True)
        _check_real("entropy_coef", self.entropy_coef, minimum=0.0)
        _check_real("kl_coef", self.kl_coef, minimum=0.0)


# --------------------------------------------------------------------------------------
# Schemes by name
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoClip:
    """No clipping: bounds ``[0, inf]``, so the surrogate is the plain ``r A``."""

    name: str = "none"

    @property
    def label(self) -> str:
        return "no clipping"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """``lower = 0``, ``upper = inf`` in the shape and type of ``old_log_prob``."""
        x = old_log_prob
        if hasattr(x, "new_zeros"):  # torch
            return Band(x.new_zeros(x.shape), x.new_full(x.shape, math.inf))
        x = np.asarray(x, dtype=np.float64)
        return Band(np.zeros_like(x), np.full_like(x, math.inf))


@dataclass(frozen=True)
class SchemeSpec:
    """A scheme of the comparison: its key (table name), plot label and object."""

    key: str
    label: str
    scheme: Any

    @property
    def style(self) -> str:
        """Colour/line-style key for :mod:`bandtheory.plotting.style`."""
        divergence = getattr(self.scheme, "divergence", None)
        if divergence is not None:
            return str(divergence.name)
        return str(getattr(self.scheme, "name", self.key))


_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\([0-9./+-]+\))?)\s*(?::(.*))?$")
_PARAM = re.compile(r"^\s*([a-z_]+)\s*=\s*([-+0-9.eE]+)\s*$")
_PARAMS = {
    "clip": ("eps",),
    "clip_higher": ("eps_low", "eps_high"),
    "dcpo": ("eps_low", "eps_high"),
    "band": ("delta",),
    "none": (),
}


def _known_names() -> str:
    return "clip, clip_higher, dcpo, none, band_<divergence> (" + ", ".join(
        f"band_{n}" for n in _div.names()) + ")"


def parse_scheme(spec: str | SchemeSpec) -> SchemeSpec:
    """A scheme from a short text spec.

    Grammar: ``NAME`` or ``NAME:key=value,key=value`` with NAME one of ``clip``
    (``eps``), ``clip_higher`` and ``dcpo`` (``eps_low``, ``eps_high``), ``none`` and
    ``band_<divergence>`` (``delta``; any registry name, e.g. ``band_kl``,
    ``band_alpha(2)``). Values are decimal numbers; nothing is evaluated. Defaults:
    ``eps = 0.2``, ``eps_low = 0.2``, ``eps_high = 0.28``, ``delta = 0.05``.

    Examples: ``clip``, ``clip:eps=0.3``, ``band_tv:delta=0.1``.

    Raises:
        ValueError: For an unknown name or parameter, or a malformed spec.
    """
    if isinstance(spec, SchemeSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a scheme spec must be a string, got {type(spec).__name__}")
    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"malformed scheme spec {spec!r}; use NAME or NAME:key=value,... "
                         f"with NAME one of {_known_names()}")
    name, rest = match.group(1), match.group(2)
    family, divergence = name, None
    if name.startswith("band_"):
        family, divergence = "band", name[len("band_"):]
        try:
            divergence = _div.get(divergence)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"unknown scheme {name!r}; choose one of {_known_names()}") from exc
    if family not in _PARAMS:
        raise ValueError(f"unknown scheme {name!r}; choose one of {_known_names()}")
    params: dict[str, float] = {}
    if rest is not None and rest.strip():
        for item in rest.split(","):
            pm = _PARAM.match(item)
            if pm is None:
                raise ValueError(f"malformed parameter {item.strip()!r} in scheme spec {spec!r}; "
                                 "use key=number")
            key, value = pm.group(1), pm.group(2)
            if key not in _PARAMS[family]:
                valid = ", ".join(_PARAMS[family]) or "none"
                raise ValueError(f"unknown parameter {key!r} for scheme {name!r}; valid: {valid}")
            try:
                params[key] = float(value)
            except ValueError as exc:
                raise ValueError(f"parameter {key!r} of {spec!r} is not a number: {value!r}") from exc
    if family == "clip":
        scheme = _schemes.clip(**params)
        label = f"clip {scheme.eps_high:g}"
    elif family == "clip_higher":
        scheme = _schemes.clip_higher(**params)
        label = f"Clip-Higher {scheme.eps_low:g}/{scheme.eps_high:g}"
    elif family == "dcpo":
        scheme = _schemes.dcpo(**params)
        label = f"DCPO {scheme.eps_low:g}/{scheme.eps_high:g}"
    elif family == "none":
        scheme = NoClip()
        label = "no clipping"
    else:
        scheme = _schemes.band(divergence, **params)
        pretty = {"kl": "KL", "tv": "TV", "chi2": "χ²"}.get(divergence.name, divergence.name)
        label = f"Band {pretty} δ={scheme.delta:g}"
    key = name if not params else name + ":" + ",".join(f"{k}={v:g}" for k, v in params.items())
    return SchemeSpec(key=key, label=label, scheme=scheme)


def resolve_schemes(specs: Iterable[str | SchemeSpec] | str | None) -> list[SchemeSpec]:
    """Parse a list of scheme specs (``None`` gives :data:`DEFAULT_SCHEMES`); keys must be unique."""
    if specs is None:
        specs = DEFAULT_SCHEMES
    if isinstance(specs, (str, SchemeSpec)):
        specs = [specs]
    out = [parse_scheme(s) for s in specs]
    if not out:
        raise ValueError("no schemes given; name at least one of " + _known_names())
    keys = [s.key for s in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate schemes: {', '.join(dup)}")
    return out


def make_env(env: str | Bandit | SequenceEnv, *, K: int | None = None) -> Bandit | SequenceEnv:
    """An environment from its name (``"bandit"`` or ``"sequence"``) or as given.

    ``K`` overrides the vocabulary size of a named environment (ranks beyond ``K`` are
    then refused by the environment's own checks).
    """
    if isinstance(env, (Bandit, SequenceEnv)):
        if K is not None and K != env.K:
            raise ValueError(f"K={K} conflicts with the given environment's K={env.K}")
        return env
    if not isinstance(env, str):
        raise TypeError(f"env must be 'bandit', 'sequence' or an environment, got {type(env).__name__}")
    if isinstance(K, bool) or (K is not None and not isinstance(K, (int, np.integer))):
        raise TypeError(f"K must be an integer, got {type(K).__name__}")
    if K is not None and K < 2:
        raise ValueError(f"K (vocabulary size) must be >= 2, got {K}")
    name = env.strip().lower()
    if name == "bandit":
        if K is None:
            return Bandit()
        default = Bandit()
        return Bandit(K=K, best_rank=min(default.best_rank, K),
                      n_head=min(default.n_head, max(K - 2, 0)))
    if name == "sequence":
        if K is None:
            return SequenceEnv()
        default = SequenceEnv()
        return SequenceEnv(K=K, target_ranks=tuple(min(r, K) for r in default.target_ranks),
                           n_head=min(default.n_head, max(K - 2, 0)))
    raise ValueError(f"unknown env {env!r}; choose one of bandit, sequence")


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "bandtheory.simulate needs PyTorch for autograd; install it with "
            "`pip install bandtheory[torch]`"
        ) from exc
    return torch


@dataclass(frozen=True)
class _StepBounds:
    """A scheme whose bounds were computed once per step for the tokens of a minibatch.

    The Band depends on ``pi_old`` alone, which is fixed during a step, so recomputing
    it for every minibatch would repeat identical root solves.
    """

    name: str
    label: str
    lower: Any
    upper: Any

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        if tuple(old_log_prob.shape) != tuple(self.lower.shape):
            raise ValueError("internal: precomputed bounds do not match the minibatch shape")
        return Band(self.lower, self.upper)


def clip_fractions(log_prob: Any, old_log_prob: Any, advantages: Any, lower: Any,
                   upper: Any) -> tuple[Any, Any]:
    """Per-row clip fractions, as defined by :func:`bandtheory.losses.policy_loss`.

    With ``r = exp(log_prob - old_log_prob)``, the upper fraction counts tokens with
    ``A > 0`` and ``r > upper`` (clipping removes their gradient) and the lower fraction
    tokens with ``A < 0`` and ``r < lower``, each divided by the tokens of the row.

    Args:
        log_prob, old_log_prob, advantages, lower, upper: torch tensors ``(S, N)``.

    Returns:
        ``(upper_fraction, lower_fraction)``, tensors of shape ``(S,)``.
    """
    r = (log_prob - old_log_prob).exp()
    hit_up = (advantages > 0) & (r > upper)
    hit_lo = (advantages < 0) & (r < lower)
    return hit_up.double().mean(dim=-1), hit_lo.double().mean(dim=-1)


def _policy_metrics(env: Any, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Exact per-seed metrics of the policy ``probs`` (shape ``(S, n_states, K)``)."""
    d = env.visitation(probs)
    L = env.length
    return {
        "entropy": (d * entropy(probs)).sum(axis=-1) / L,
        "p_best": env.best_probability(probs),
        "reward": env.expected_reward(probs),
        "n99": (d * mass_count(probs, mass=0.99)).sum(axis=-1) / L,
    }


def run(
    env: Bandit | SequenceEnv,
    spec: SchemeSpec,
    seeds: Sequence[int],
    config: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    record_logits: bool = False,
    trace: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Train one scheme on all seeds; returns per-step arrays of shape ``(T + 1, S)``.

    Row 0 is the initial policy (update metrics NaN); row ``t`` is the policy after the
    ``t``-th update together with that update's clip fractions and KL.

    Args:
        env: The environment.
        spec: The scheme (see :func:`parse_scheme`).
        seeds: Non-negative integer seeds; each drives sampling, reward noise and
            minibatch shuffles of its own run.
        config: Loop hyperparameters.
        on_step: Called with the step number after every step (progress reporting).
        record_logits: Also return ``"logits"``, shape ``(T + 1, S, n_states, K)``, the
            policy after each step (for checking the metrics).
        trace: Debug hook for tests: called before every minibatch's Adam step with a
            dict of fresh numpy copies: ``step, epoch, minibatch`` (ints), ``logits``
            ``(S, n_states, K)`` (the policy the minibatch's gradient is taken at),
            ``old_log_policy`` (``log pi_old`` of the step, same shape), ``returns``
            ``(S, G)``, ``index`` ``(S, mb)`` (the minibatch's completions), and per token
            of the minibatch
            ``(S, mb, L)``: ``tokens, states, adv, old_log_prob, log_prob, lower,
            upper``. ``None`` (the default) costs one test per minibatch.
    """
    torch = _torch()
    threads = torch.get_num_threads()
    # The tensors are tiny; intra-op threads only add spin-waiting (15x the CPU time on
    # a 2-core machine), so the loop runs single-threaded and restores the setting.
    torch.set_num_threads(1)
    try:
        return _run(torch, env, spec, seeds, config, on_step, record_logits, trace)
    finally:
        torch.set_num_threads(threads)


def _run(torch, env, spec, seeds, config, on_step, record_logits, trace):
    from ..losses import policy_loss

    S, G, E, M = len(seeds), config.group, config.epochs, config.minibatches
    L, K, nS = env.length, env.K, env.n_states
    mb = G // M
    T = config.steps
    rngs = [np.random.default_rng(int(s)) for s in seeds]

    init = torch.tensor(np.broadcast_to(env.init_logits(), (S, nS, K)).copy(), dtype=torch.float64)
    logits = init.clone().requires_grad_(True)
    ref_logp = torch.log_softmax(init, dim=-1)
    m = torch.zeros_like(init)
    v = torch.zeros_like(init)
    n_adam = 0
    seed_ix = torch.arange(S)[:, None, None]

    out = {k: np.full((T + 1, S), np.nan) for k in METRICS}
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1).numpy()
    for key, value in _policy_metrics(env, probs).items():
        out[key][0] = value
    if record_logits:
        out["logits"] = np.empty((T + 1, S, nS, K))
        out["logits"][0] = logits.detach().numpy()

    for step in range(1, T + 1):
        with torch.no_grad():
            old_logp_all = torch.log_softmax(logits, dim=-1)
        old_probs = old_logp_all.exp().numpy()
        u = np.stack([rng.random((G, L)) for rng in rngs])
        z = np.stack([rng.standard_normal(G) for rng in rngs])
        tokens, states = env.sample(old_probs, u)
        returns = env.returns(tokens, z)
        centred = returns - returns.mean(axis=1, keepdims=True)
        adv = centred / (returns.std(axis=1, keepdims=True) + 1e-8)
        tokens_t = torch.from_numpy(tokens)
        states_t = torch.from_numpy(states)
        old_lp = old_logp_all[seed_ix, states_t, tokens_t]  # (S, G, L)
        adv_tok = torch.from_numpy(np.repeat(adv[:, :, None], L, axis=2))
        band = spec.scheme.bounds(old_lp.numpy())
        lower = torch.as_tensor(np.asarray(band.lower, dtype=np.float64))
        upper = torch.as_tensor(np.asarray(band.upper, dtype=np.float64))

        # Old log-probabilities come from log_softmax (finite, <= 0), so policy_loss's
        # host-side input checks are skipped in this hot loop.
        clip_hi = torch.zeros(S, dtype=torch.float64)
        clip_lo = torch.zeros(S, dtype=torch.float64)
        for epoch in range(E):
            perms = np.stack([rng.permutation(G) for rng in rngs])
            for j in range(M):
                idx = torch.from_numpy(perms[:, j * mb:(j + 1) * mb])[:, :, None]  # (S, mb, 1)
                sel = (torch.arange(S)[:, None, None], idx, torch.arange(L)[None, None, :])
                st, tk = states_t[sel], tokens_t[sel]
                logp_all = torch.log_softmax(logits, dim=-1)
                lp = logp_all[torch.arange(S)[:, None, None], st, tk]
                old_mb, adv_mb = old_lp[sel], adv_tok[sel]
                lo_mb, up_mb = lower[sel].reshape(S, -1), upper[sel].reshape(S, -1)
                # One call for all seeds: each seed is a row, "seq-mean-token-mean" averages
                # tokens within a seed and then seeds, so S * loss = sum of per-seed losses
                # and each seed's gradient is that of its own token-mean loss.
                loss, _ = policy_loss(
                    lp.reshape(S, -1), old_mb.reshape(S, -1), adv_mb.reshape(S, -1),
                    scheme=_StepBounds(spec.scheme.name, spec.label, lo_mb, up_mb),
                    agg="seq-mean-token-mean", check_input=False,
                )
                total = S * loss
                hi, lo = clip_fractions(lp.detach().reshape(S, -1), old_mb.reshape(S, -1),
                                        adv_mb.reshape(S, -1), lo_mb, up_mb)
                clip_hi += hi
                clip_lo += lo
                if config.entropy_coef or config.kl_coef:
                    p_all = logp_all.exp()
                    seeds_g = torch.arange(S)[:, None, None]
                    if config.entropy_coef:
                        h = -(p_all * logp_all).sum(dim=-1)  # (S, nS)
                        total = total - config.entropy_coef * h[seeds_g, st].mean(dim=(1, 2)).sum()
                    if config.kl_coef:
                        kl = (p_all * (logp_all - ref_logp)).sum(dim=-1)
                        total = total + config.kl_coef * kl[seeds_g, st].mean(dim=(1, 2)).sum()
                if trace is not None:
                    trace({
                        "step": step, "epoch": epoch, "minibatch": j,
                        "logits": logits.detach().numpy().copy(),
                        "old_log_policy": old_logp_all.numpy().copy(),
                        "returns": returns.copy(), "index": idx[:, :, 0].numpy().copy(),
                        "tokens": tk.numpy().copy(), "states": st.numpy().copy(),
                        "adv": adv_mb.numpy().copy(), "old_log_prob": old_mb.numpy().copy(),
                        "log_prob": lp.detach().numpy().copy(),
                        "lower": lower[sel].numpy().copy(), "upper": upper[sel].numpy().copy(),
                    })
                (grad,) = torch.autograd.grad(total, logits)
                n_adam += 1
                with torch.no_grad():
                    m.mul_(config.beta1).add_(grad, alpha=1.0 - config.beta1)
                    v.mul_(config.beta2).addcmul_(grad, grad, value=1.0 - config.beta2)
                    m_hat = m / (1.0 - config.beta1 ** n_adam)
                    v_hat = v / (1.0 - config.beta2 ** n_adam)
                    logits.sub_(config.lr * m_hat / (v_hat.sqrt() + config.adam_eps))

        with torch.no_grad():
            new_logp = torch.log_softmax(logits, dim=-1)
            probs = new_logp.exp().numpy()
        d_old = env.visitation(old_probs)
        for key, value in _policy_metrics(env, probs).items():
            out[key][step] = value
        kl_state = (old_probs * (old_logp_all.numpy() - new_logp.numpy())).sum(axis=-1)
        out["kl"][step] = (d_old * kl_state).sum(axis=-1) / L
        out["batch_reward"][step] = returns.mean(axis=1)
        out["clip_upper_pos"][step] = clip_hi.numpy() / (E * M)
        out["clip_lower_neg"][step] = clip_lo.numpy() / (E * M)
        if record_logits:
            out["logits"][step] = logits.detach().numpy()
        if on_step is not None:
            on_step(step)
    return out
