"""bandtheory: the theory behind BandPO's probability-aware clipping bounds.

The Band of a token with old probability ``p`` is the interval of importance ratios
that an f-divergence trust region of radius ``delta`` allows; it depends on ``p``
alone (BandPO, arXiv 2603.04918). The package layers, lowest first:

- :mod:`bandtheory.divergences`: the registry of f-divergences;
- :mod:`bandtheory.bounds`: the exact numeric Band (:func:`band_bounds`);
- :mod:`bandtheory.schemes`: clipping schemes with one interface;
- :mod:`bandtheory.losses`: clipped surrogate losses (:func:`policy_loss`) and clip metrics.
"""

from . import divergences
from . import schemes
from . import symbolic
from .bounds import Band, band_bounds
from .divergences import DIVERGENCES
from .losses import policy_loss

__all__ = ["Band", "DIVERGENCES", "band_bounds", "divergences", "policy_loss", "schemes", "symbolic", "validate", "__version__"]

__version__ = "0.1.0"


def validate(divergence, **kwargs):
    """Validate a divergence; see :func:`bandtheory.convex.validate` (imported lazily)."""
    from .convex import validate as _validate

    return _validate(divergence, **kwargs)
