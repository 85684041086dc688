"""`bandtheory validate`: the printed table, the verdict, the exit status and the files.

Truth: the library's ``band_bounds`` recomputed here for every grid row of the CSV,
the CSV itself against the printed table (row counts per route pair), and the
refusal of an unsafe expression without side effects. Small grids (``--delta``,
``--p``, ``--k``, ``--seeds``) keep each run to a few solves.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bandtheory import band_bounds, convex
from bandtheory.cli import main

# The venv's console script when installed, else the module (same entry point).
_SCRIPT = Path(sys.executable).with_name("bandtheory")
_COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "bandtheory.cli"]

_SMALL = ["--delta", "0.05", "0.5", "--p", "0.01", "0.5", "--k", "10", "--seeds", "1"]
_COLUMNS = {"source", "k", "seed", "index", "p", "delta", "side", "pair", "value_a", "value_b",
            "abs_diff", "rel_diff", "tol", "ok"}


def _table(out: str) -> dict[str, tuple[int, str]]:
    """``pair -> (n, verdict)`` from the printed per-pair table."""
    rows = {}
    for line in out.splitlines():
        for pair in ("convex vs band_bounds", "closed_form vs band_bounds", "closed_form vs convex"):
            if line.startswith(pair):
                rest = line[len(pair):].split()
                rows[pair] = (int(rest[0]), rest[-1])
    return rows


def _check_files(out_dir: Path, stdout: str, reference: str, n_grid: int) -> pd.DataFrame:
    csv, png = out_dir / "validation.csv", out_dir / "validation.png"
    assert csv.is_file() and png.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = pd.read_csv(csv)
    assert _COLUMNS <= set(table.columns)
    # Every comparison is in the CSV: as many rows per pair as the printed table says.
    printed = _table(stdout)
    assert printed and {pair: n for pair, (n, _) in printed.items()} == (
        table.groupby("pair").size().to_dict())
    assert all(verdict == "PASS" for _, verdict in printed.values())
    assert table["ok"].all()
    # The grid rows' band_bounds values are the library's (recomputed independently).
    grid = table[(table["source"] == "grid") & (table["pair"] == "convex vs band_bounds")]
    assert len(grid) == n_grid
    for row in grid.itertuples(index=False):
        band = band_bounds(math.log(row.p), reference, delta=row.delta)
        expected = float(getattr(band, row.side))
        assert row.value_b == pytest.approx(expected, rel=1e-12, abs=1e-300)
        assert abs(row.value_a - row.value_b) <= max(convex.CONVEX_RTOL * abs(expected),
                                                     convex.RATIO_ATOL)
    return table


def test_validate_builtin_through_console_script(tmp_path):
    out_dir = tmp_path / "report"
    run = subprocess.run([*_COMMAND, "validate", "chi2", *_SMALL, "--out", str(out_dir)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "validation of divergence 'chi2' (convex method: dcp)" in run.stdout
    assert "[ok] convexity" in run.stdout and "[ok] reduction theorem" in run.stdout
    assert "route pair" in run.stdout and run.stdout.rstrip().splitlines()[-1].startswith("wrote ")
    assert "verdict: PASS" in run.stdout
    table = _check_files(out_dir, run.stdout, "chi2", n_grid=2 * 2 * 2)  # p x delta x side
    assert {"grid", "dirichlet"} == set(table["source"])
    assert sorted(set(table["delta"])) == [0.05, 0.5]


def test_validate_typed_expression(tmp_path, capsys):
    out_dir = tmp_path / "typed"
    # One delta, one grid p, K = 6: each side a cutting-plane run of ~15 linear programs.
    argv = ["validate", "(u - 1)**2 / u", "--delta", "0.2", "--p", "0.05", "--k", "6",
            "--seeds", "1", "--out", str(out_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(convex method: cutting_plane)" in out and "verdict: PASS" in out
    # The typed generator is Neyman's chi2: its Band is neyman_chi2's.
    _check_files(out_dir, out, "neyman_chi2", n_grid=2)


def test_validate_fail_exits_1(tmp_path, monkeypatch, capsys):
    # A zero tolerance (with the floor) turns rounding-level disagreements into FAILs.
    monkeypatch.setattr(convex, "CONVEX_RTOL", 0.0)
    monkeypatch.setattr(convex, "RATIO_ATOL", 0.0)
    monkeypatch.setattr(convex, "_closed_form", lambda div, timeout: (None, "skipped"))
    argv = ["validate", "kl", "--delta", "0.05", "--p", "0.3", "0.5", "--k", "10", "--seeds", "1",
            "--out", str(tmp_path)]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "verdict: FAIL" in out and "FAIL" in _table(out)["convex vs band_bounds"]
    table = pd.read_csv(tmp_path / "validation.csv")
    assert not table["ok"].all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os').system('echo pwned')", ""),
        ("u.__class__", ""),
        ("u +* 2", ""),
        ("u**3 - 3*u**2 + 2", "convex"),
        ("(u - 1)**2 + 1", "f(1)"),
    ],
)
def test_refused_expression_is_one_line_with_status_2(text, message, tmp_path, capsys):
    out_dir = tmp_path / "never"
    assert main(["validate", text, "--out", str(out_dir)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bandtheory: error:")
    assert message in err
    assert "pwned" not in captured.out and not out_dir.exists()


def test_malicious_expression_has_no_side_effect(tmp_path):
    marker = tmp_path / "PWNED"
    text = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    run = subprocess.run([*_COMMAND, "validate", text, "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2
    err = run.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bandtheory: error:")
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert run.stdout.strip() == ""
