"""`bandtheory bounds`: the table printed equals the library's values."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from bandtheory import band_bounds
from bandtheory.cli import main


def _rows(text: str) -> dict[tuple[str, float], tuple[float, float]]:
    rows = {}
    for line in text.splitlines()[2:]:
        *name, p, lower, upper = line.split()
        rows[(" ".join(name), float(p))] = (float(lower), float(upper))
    return rows


def test_bounds_table_matches_library(capsys):
    assert main(["bounds", "--divergence", "chi2", "--delta", "0.1", "--p", "0.01", "0.5"]) == 0
    rows = _rows(capsys.readouterr().out)
    for p in (0.01, 0.5):
        band = band_bounds(math.log(p), "chi2", delta=0.1)
        lower, upper = rows[("band[chi2, delta=0.1]", p)]
        assert lower == pytest.approx(float(band.lower), rel=1e-7)
        assert upper == pytest.approx(float(band.upper), rel=1e-7)
        assert upper == pytest.approx(min(1 + math.sqrt(0.1 * (1 - p) / p), 1 / p), rel=1e-7)
        assert rows[("clip", p)] == (0.8, 1.2)
        assert rows[("clip_higher", p)] == (0.8, 1.28)
        dcpo_up = 0.5 + 0.5 * math.sqrt(1 + 4 * 0.28 / p)
        assert rows[("dcpo", p)][1] == pytest.approx(dcpo_up, rel=1e-7)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bounds", "--p", "1.5"], "--p values must lie in (0, 1]"),
        (["bounds", "--p", "0"], "--p values must lie in (0, 1]"),
        (["bounds", "--divergence", "kll"], "unknown divergence 'kll'"),
        (["bounds", "--delta", "-1"], "delta must be a finite number > 0"),
    ],
)
def test_bad_input_is_one_line_with_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("bandtheory: error:") and message in err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "bandtheory.cli", "bounds", "--p", "0.2", "--divergence", "tv"],
        capture_output=True, text=True, check=True,
    ).stdout
    lower, upper = _rows(out)[("band[tv, delta=0.05]", 0.2)]
    assert (lower, upper) == (0.75, 1.25)
    assert np.isfinite(lower)
