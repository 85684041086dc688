"""Environments of the lab: a one-step bandit and a short sequence task.

Both are tabular. A policy is an array of logits of shape ``(n_states, K)`` (with a
leading batch axis for seeds where noted) and every quantity the lab records is an
exact function of the softmax probabilities, so nothing here is estimated from samples
except the rewards the learner sees.

Initial policy (both environments): Zipf-like logits ``-s log(rank)`` in every state, so
``pi(rank k) = k^{-s} / H_{K,s}``: a few head tokens hold most of the mass and most of the
vocabulary is rare, as in a language model. Token ``i`` has rank ``i + 1``.

Bandit (:class:`Bandit`): one state, one action. The mean reward of token ``a`` is

- ``best_reward`` for the single best token, at rank ``best_rank`` (rare at the start);
- ``head_reward`` for the ``n_head`` most probable tokens (decent, easy to find);
- a fixed draw from ``U(0, tail_max)`` for every other token,

and the learner sees ``mu(a) + noise * N(0, 1)``.

Sequence (:class:`Sequence`): ``length`` steps; at each step the state is the position
``t`` and the prefix class "on the best path so far / off it" (position 0 has one
state), so there are ``2 length - 1`` states. Position ``t`` has its own rare target
token (rank ``target_ranks[t]``); the return of a trajectory is

.. math::

    R = \\frac1L \\sum_t \\mu_t(a_t) + \\text{bonus}\\cdot 1[a_t = a^*_t\\ \\forall t]
        + \\text{noise}\\cdot N(0, 1),

with ``mu_t`` built like the bandit's rewards. The best trajectory passes through a rare
token at every step, so its initial probability is a product of small numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Bandit",
    "Sequence",
    "zipf_logits",
    "entropy",
    "mass_count",
    "kl_divergence",
]


def _check_int(name: str, value: Any, *, minimum: int, why: str = "") -> int:
    """An integer ``>= minimum`` (environments and the runner's ``TrainConfig``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{why}, got {value}")
    return int(value)


def _check_real(name: str, value: Any, *, minimum: float = -math.inf, strict: bool = False) -> float:
    """A finite real ``>= minimum`` (``> minimum`` if ``strict``), as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    bad = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or bad:
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {rel} {minimum:g}, got {value!r}")
    return value


def _check_vocab(K: Any, zipf: Any) -> int:
    """Vocabulary size and Zipf exponent of the initial policy (both environments)."""
    K = _check_int("K", K, minimum=2)
    _check_real("zipf", zipf, minimum=0.0, strict=True)
    return K


def _check_n_head(n_head: Any, K: int) -> int:
    n_head = _check_int("n_head", n_head, minimum=0)
    if n_head > K - 1:
        raise ValueError(f"n_head must be in [0, K - 1 = {K - 1}], got {n_head}")
    return n_head


def _freeze_mean_reward(env: Any, mu: np.ndarray) -> None:
    """Make ``mu`` read-only and store it as the frozen dataclass's ``mean_reward``."""
    mu.setflags(write=False)
    object.__setattr__(env, "mean_reward", mu)


def zipf_logits(K: int, *, s: float) -> np.ndarray:
    """Logits ``-s log(k)`` for ranks ``k = 1..K`` (softmax gives ``k^{-s} / H_{K,s}``)."""
    return -s * np.log(np.arange(1, K + 1, dtype=np.float64))


# --------------------------------------------------------------------------------------
# Exact metrics of categorical distributions (last axis)
# --------------------------------------------------------------------------------------


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy ``-sum p log p`` in nats over the last axis (``0 log 0 = 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    return -terms.sum(axis=-1)


def mass_count(probs: np.ndarray, *, mass: float = 0.99) -> np.ndarray:
    """Fewest distinct tokens whose probabilities sum to at least ``mass`` (last axis).

    The tokens are taken in decreasing order of probability, which is optimal. A relative
    slack of ``1e-12`` absorbs rounding in the cumulative sum.
    """
    ordered = -np.sort(-probs, axis=-1)
    cum = np.cumsum(ordered, axis=-1)
    target = mass * probs.sum(axis=-1, keepdims=True) * (1.0 - 1e-12)
    return (cum < target).sum(axis=-1) + 1


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p || q) = sum p log(p / q)`` over the last axis (``0 log 0 = 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def _inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample indices from rows ``probs[..., K]`` with uniforms ``u[...]`` of the same batch."""
    cdf = np.cumsum(probs, axis=-1)
    scaled = u * cdf[..., -1]
    idx = (cdf < scaled[..., None]).sum(axis=-1)
    return np.minimum(idx, probs.shape[-1] - 1)


def _tail_rewards(K: int, n_head: int, *, head_reward: float,
                  tail_max: float, rng: np.random.Generator) -> np.ndarray:
    mu = rng.uniform(0.0, tail_max, size=K)
    mu[:n_head] = head_reward
    return mu


# --------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bandit:
    """One-step bandit whose best token is rare under the Zipf initial policy.

    Args:
        K: Vocabulary size, ``>= 2``.
        zipf: Zipf exponent ``s > 0`` of the initial policy.
        best_rank: Rank (1 = most probable) of the best token, in ``[1, K]``.
        best_reward: Mean reward of the best token.
        n_head: Number of head tokens (ranks ``1..n_head``, excluding the best token).
        head_reward: Mean reward of the head tokens (must be below ``best_reward``).
        tail_max: Tail tokens draw their mean reward from ``U(0, tail_max)``.
        noise: Standard deviation of the Gaussian reward noise, ``>= 0``.
        layout_seed: Seed of the fixed tail rewards (the environment is a constant).
    """

    K: int = 256
    zipf: float = 1.1
    best_rank: int = 25
    best_reward: float = 1.0
    n_head: int = 4
    head_reward: float = 0.6
    tail_max: float = 0.6
    noise: float = 0.1
    layout_seed: int = 0
    mean_reward: np.ndarray = field(init=False, repr=False, compare=False)

    name = "bandit"

    def __post_init__(self) -> None:
        K = _check_vocab(self.K, self.zipf)
        best = _check_int("best_rank", self.best_rank, minimum=1)
        if best > K:
            raise ValueError(f"best_rank must be in [1, K={K}], got {best}")
        n_head = _check_n_head(self.n_head, K)
        _check_real("noise", self.noise, minimum=0.0)
        _check_real("tail_max", self.tail_max, minimum=0.0)
        head = _check_real("head_reward", self.head_reward)
        top = _check_real("best_reward", self.best_reward)
        if not (top > head and top > self.tail_max):
            raise ValueError("best_reward must exceed head_reward and tail_max, "
                             f"got best_reward={top}, head_reward={head}, tail_max={self.tail_max}")
        rng = np.random.default_rng(_check_int("layout_seed", self.layout_seed, minimum=0))
        mu = _tail_rewards(K, n_head, head_reward=head, tail_max=self.tail_max, rng=rng)
        mu[best - 1] = top
        _freeze_mean_reward(self, mu)

    # -- structure ---------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        """Number of tabular states (1)."""
        return 1

    @property
    def length(self) -> int:
        """Tokens per completion (1)."""
        return 1

    @property
    def best_tokens(self) -> tuple[int, ...]:
        """Token id of the best action (rank ``best_rank``)."""
        return (self.best_rank - 1,)

    def init_logits(self) -> np.ndarray:
        """Zipf logits, shape ``(1, K)``."""
        return zipf_logits(self.K, s=self.zipf)[None, :]

    # -- sampling ----------------------------------------------------------------------

    def sample(self, probs: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and states of a group, by inverse CDF.

        Args:
            probs: Policy probabilities, shape ``(S, 1, K)``.
            u: Uniforms in ``[0, 1)``, shape ``(S, G, 1)``.

        Returns:
            ``(tokens, states)``, integer arrays of shape ``(S, G, 1)``.
        """
        tokens = _inverse_cdf(probs[:, None, 0, :], u[..., 0])[..., None]
        return tokens, np.zeros_like(tokens)

    def returns(self, tokens: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Noisy returns ``mu(a) + noise * z`` of shape ``(S, G)``; ``z`` standard normal."""
        return self.mean_reward[tokens[..., 0]] + self.noise * z

    # -- exact quantities --------------------------------------------------------------

    def visitation(self, probs: np.ndarray) -> np.ndarray:
        """Expected visits of each state per completion, shape ``(S, 1)`` (all ones)."""
        return np.ones(probs.shape[:-1])

    def best_probability(self, probs: np.ndarray) -> np.ndarray:
        """Probability of the best token, shape ``(S,)``."""
        return probs[:, 0, self.best_rank - 1]

    def expected_reward(self, probs: np.ndarray) -> np.ndarray:
        """``sum_a pi(a) mu(a)``, shape ``(S,)``."""
        return probs[:, 0, :] @ self.mean_reward

    def optimal_reward(self) -> float:
        """Reward of the best deterministic policy."""
        return float(self.best_reward)


@dataclass(frozen=True)
class Sequence:
    """Short sequence task whose best trajectory passes through rare tokens.

    Args:
        K: Vocabulary size, ``>= 2``.
        zipf: Zipf exponent ``s > 0`` of the initial policy (every state).
        target_ranks: Rank of the target token at each position; its length is the
            horizon ``L >= 1``.
        n_head: Number of head tokens per position (ranks ``1..n_head``).
        head_reward: Per-position mean reward of head tokens.
        tail_max: Tail tokens draw per-position rewards from ``U(0, tail_max)``.
        bonus: Extra return for the whole best trajectory, ``>= 0``.
        noise: Standard deviation of the Gaussian return noise, ``>= 0``.
        layout_seed: Seed of the fixed tail rewards.
    """

    K: int = 128
    zipf: float = 1.1
    target_ranks: tuple[int, ...] = (8, 12, 10)
    n_head: int = 3
    head_reward: float = 0.6
    tail_max: float = 0.4
    bonus: float = 0.5
    noise: float = 0.1
    layout_seed: int = 0
    mean_reward: np.ndarray = field(init=False, repr=False, compare=False)

    name = "sequence"

    def __post_init__(self) -> None:
        K = _check_vocab(self.K, self.zipf)
        ranks = tuple(self.target_ranks)
        if len(ranks) < 1:
            raise ValueError("target_ranks must name at least one position")
        for r in ranks:
            _check_int("target_ranks entries", r, minimum=1)
            if r > K:
                raise ValueError(f"target_ranks entries must be in [1, K={K}], got {r}")
        object.__setattr__(self, "target_ranks", tuple(int(r) for r in ranks))
        n_head = _check_n_head(self.n_head, K)
        head = _check_real("head_reward", self.head_reward)
        if not (1.0 > head and 1.0 > self.tail_max):
            raise ValueError("head_reward and tail_max must be below the target reward 1, "
                             f"got head_reward={head}, tail_max={self.tail_max}")
        _check_real("tail_max", self.tail_max, minimum=0.0)
        _check_real("bonus", self.bonus, minimum=0.0)
        _check_real("noise", self.noise, minimum=0.0)
        rng = np.random.default_rng(_check_int("layout_seed", self.layout_seed, minimum=0))
        mu = np.stack([
            _tail_rewards(K, n_head, head_reward=head, tail_max=self.tail_max, rng=rng)
            for r in ranks
        ])
        for t, r in enumerate(ranks):
            mu[t, r - 1] = 1.0
        _freeze_mean_reward(self, mu)

    # -- structure ---------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Horizon ``L``."""
        return len(self.target_ranks)

    @property
    def n_states(self) -> int:
        """``2 L - 1``: position 0, then (position, on-path) and (position, off-path)."""
        return 2 * self.length - 1

    @property
    def best_tokens(self) -> tuple[int, ...]:
        """Target token id at each position."""
        return tuple(r - 1 for r in self.target_ranks)

    @staticmethod
    def state_index(t: int, on_path: bool) -> int:
        """Index of the state at position ``t`` with the given prefix class."""
        if t == 0:
            return 0
        return 2 * t - 1 if on_path else 2 * t

    def init_logits(self) -> np.ndarray:
        """Zipf logits in every state, shape ``(2 L - 1, K)``."""
        return np.tile(zipf_logits(self.K, s=self.zipf), (self.n_states, 1))

    # -- sampling ----------------------------------------------------------------------

    def sample(self, probs: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and states of a group of trajectories, by inverse CDF per position.

        Args:
            probs: Policy probabilities, shape ``(S, 2 L - 1, K)``.
            u: Uniforms in ``[0, 1)``, shape ``(S, G, L)``.

        Returns:
            ``(tokens, states)``, integer arrays of shape ``(S, G, L)``.
        """
        S, G, L = u.shape
        tokens = np.empty((S, G, L), dtype=np.int64)
        states = np.empty((S, G, L), dtype=np.int64)
        on_path = np.ones((S, G), dtype=bool)
        seeds = np.arange(S)[:, None]
        for t in range(L):
            state = np.zeros((S, G), dtype=np.int64) if t == 0 else np.where(on_path, 2 * t - 1, 2 * t)
            rows = probs[seeds, state]  # (S, G, K)
            tokens[:, :, t] = _inverse_cdf(rows, u[:, :, t])
            states[:, :, t] = state
            on_path &= tokens[:, :, t] == self.target_ranks[t] - 1
        return tokens, states

    def returns(self, tokens: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Noisy returns of shape ``(S, G)``; ``z`` standard normal of that shape."""
        L = self.length
        per_pos = self.mean_reward[np.arange(L), tokens]  # (S, G, L)
        best = np.all(tokens == np.asarray(self.best_tokens), axis=-1)
        return per_pos.mean(axis=-1) + self.bonus * best + self.noise * z

    # -- exact quantities --------------------------------------------------------------

    def _on_path(self, probs: np.ndarray) -> np.ndarray:
        """Probability of being on the best path at the start of each position, ``(S, L)``."""
        S = probs.shape[0]
        on = np.ones((S, self.length))
        for t in range(1, self.length):
            s_prev = self.state_index(t - 1, True)
            on[:, t] = on[:, t - 1] * probs[:, s_prev, self.target_ranks[t - 1] - 1]
        return on

    def visitation(self, probs: np.ndarray) -> np.ndarray:
        """Expected visits of each state per trajectory, shape ``(S, 2 L - 1)``.

        Each position is visited once, so the visits of its two states sum to 1.
        """
        on = self._on_path(probs)
        d = np.empty(probs.shape[:2])
        d[:, 0] = 1.0
        for t in range(1, self.length):
            d[:, 2 * t - 1] = on[:, t]
            d[:, 2 * t] = 1.0 - on[:, t]
        return d

    def best_probability(self, probs: np.ndarray) -> np.ndarray:
        """Probability of the whole best trajectory, shape ``(S,)``."""
        L = self.length
        s_last = self.state_index(L - 1, True)
        return self._on_path(probs)[:, L - 1] * probs[:, s_last, self.target_ranks[-1] - 1]

    def expected_reward(self, probs: np.ndarray) -> np.ndarray:
        """Exact expected return, shape ``(S,)`` (noise has mean zero)."""
        d = self.visitation(probs)
        total = np.zeros(probs.shape[0])
        for t in range(self.length):
            for on_path in ((True,) if t == 0 else (True, False)):
                s = self.state_index(t, on_path)
                total += d[:, s] * (probs[:, s, :] @ self.mean_reward[t])
        return total / self.length + self.bonus * self.best_probability(probs)

    def optimal_reward(self) -> float:
        """Return of the best trajectory: ``1 + bonus``."""
        return 1.0 + float(self.bonus)
