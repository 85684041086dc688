"""The notebooks run top to bottom (they assert the facts they state) and are stored clean."""

from __future__ import annotations

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _kernel_name() -> str:
    """The kernel spec whose python is this interpreter (the venv), else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    for name in manager.find_kernel_specs():
        argv = manager.get_kernel_spec(name).argv
        if argv and pathlib.Path(argv[0]).resolve() == pathlib.Path(sys.executable).resolve():
            return name
    return "python3"


def test_notebooks_exist():
    names = {path.stem for path in NOTEBOOKS}
    assert {"01_derivations", "02_band_gallery", "03_validate_a_new_divergence",
            "04_entropy_lab"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs stored"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name=_kernel_name(),
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) on any failed assert
