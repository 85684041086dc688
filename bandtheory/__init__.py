"""bandtheory: the theory behind BandPO's probability-aware clipping bounds.

The Band of a token with old probability ``p`` is the interval of importance ratios
that an f-divergence trust region of radius ``delta`` allows; it depends on ``p``
alone (BandPO, arXiv 2603.04918). The package layers, lowest first:

- :mod:`bandtheory.divergences`: the registry of f-divergences;
- :mod:`bandtheory.bounds`: the exact numeric Band (:func:`band_bounds`);
- :mod:`bandtheory.schemes`: clipping schemes with one interface;
- :mod:`bandtheory.losses`: clipped surrogate losses (:func:`policy_loss`) and clip metrics.

:mod:`bandtheory.symbolic` and :mod:`bandtheory.losses` (with :func:`policy_loss`) are
imported on first use, so ``import bandtheory`` stays as light as the registry allows
(the app's first page load waits for it).
"""

from importlib import import_module

from . import divergences
from . import schemes
from .bounds import Band, band_bounds
from .divergences import DIVERGENCES

__all__ = ["Band", "DIVERGENCES", "band_bounds", "divergences", "policy_loss", "schemes", "symbolic", "validate", "__version__"]

__version__ = "0.1.0"

#: Submodules loaded on first attribute access (importing them binds them here).
_LAZY_MODULES = ("symbolic", "losses", "parsing")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return import_module(f".{name}", __name__)
    if name == "policy_loss":
        return import_module(".losses", __name__).policy_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | {"policy_loss"})


def validate(divergence, **kwargs):
    """Validate a divergence; see :func:`bandtheory.convex.validate` (imported lazily)."""
    from .convex import validate as _validate

    return _validate(divergence, **kwargs)
