"""The notebooks under docs/notebooks run top to bottom (nbclient), so they
never go stale; they are committed with their outputs stripped."""

import glob
import os

import nbclient
import nbformat
import pytest

from helpers import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "docs", "notebooks", "*.ipynb")))


def test_there_are_notebooks_and_they_are_stripped():
  assert NOTEBOOKS
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
  if os.path.basename(path) == "instant_rewards.ipynb":
    assert "edit distance 2" in text
    assert "sum of rewards == -ED: True" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells
                 if c.cell_type == "code" for o in c.outputs)
    assert images == 2
