"""bandtheory: the theory behind BandPO's probability-aware clipping bounds.

The Band of a token with old probability ``p`` is the interval of importance ratios
that an f-divergence trust region of radius ``delta`` allows; it depends on ``p``
alone (BandPO, arXiv 2603.04918). The package layers, lowest first:

- :mod:`bandtheory.divergences`: the registry of f-divergences;
- :mod:`bandtheory.bounds`: the exact numeric Band (:func:`band_bounds`);
- :mod:`bandtheory.schemes`: clipping schemes with one interface.
"""

from . import divergences
from . import schemes
from .bounds import Band, band_bounds
from .divergences import DIVERGENCES

__all__ = ["Band", "DIVERGENCES", "band_bounds", "divergences", "schemes", "__version__"]

__version__ = "0.1.0"
