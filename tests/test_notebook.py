"""The Colab notebook, executed end to end on the shrunk quick config.

The kernel runs in this very Python and inherits this process's environment
(8 simulated CPU devices from conftest.py). The notebook's parameters cell is
replaced with the shrunk quick config of test_imp.py, in a copy of that
config's run (the `labels_run` fixture, made once per session) with its last
round taken away: the notebook trains that round and reads the others back,
which is what running it again after an interruption does.
"""

import csv
import pathlib
import shutil

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
import nbclient
import nbformat

from sslprune_jax import runner
from test_imp import OVERRIDES

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'launch' / 'colab.ipynb'


def parameters_cell(nb):
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'expected one cell tagged "parameters"'
  return cells[0]


def test_notebook_is_committed_clean():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source
  names = ('SOURCE', 'WORKDIR', 'CONFIG', 'VARIANT', 'OVERRIDES')
  source = parameters_cell(nb).source
  assert all(f'{name} = ' in source for name in names), source


def test_notebook_runs(labels_run, data_dir, tmp_path, monkeypatch):
  config, finished, _ = labels_run
  workdir = tmp_path / 'run'
  shutil.copytree(finished, workdir)
  last = config.pruning.num_rounds
  shutil.rmtree(workdir / 'rounds' / str(last))
  (workdir / runner.COMPLETE).unlink(missing_ok=True)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  overrides = {**OVERRIDES, 'data.data_dir': data_dir}
  parameters_cell(nb).source = '\n'.join(
      [
          "SOURCE = ''",
          f'WORKDIR = {str(workdir)!r}',
          "CONFIG = 'labels'",
          "VARIANT = 'quick'",
          f'OVERRIDES = {overrides!r}',
      ]
  )
  # Matplotlib's inline backend: no window, figures become image/png outputs.
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  # No kernel_dirs: only the native kernel, i.e. this sys.executable.
  kernel = KernelManager(
      kernel_name='python3',
      kernel_spec_manager=KernelSpecManager(kernel_dirs=[]),
  )
  client = nbclient.NotebookClient(
      nb,
      km=kernel,
      timeout=600,
      resources={'metadata': {'path': str(NOTEBOOK.parent)}},
  )
  client.execute()  # Raises CellExecutionError if a cell fails.

  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not [o for o in cell.outputs if o.output_type == 'error']
  assert runner.is_complete(str(workdir))
  with open(workdir / 'results.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert [int(r['round']) for r in rows] == list(
      range(config.pruning.num_rounds + 1)
  )
  images = [
      cell
      for cell in nb.cells
      if cell.cell_type == 'code'
      and any('image/png' in o.get('data', {}) for o in cell.outputs)
  ]
  # The accuracy plot and the mask.
  assert len(images) == 2
  text = ''.join(
      o.get('text', '')
      for cell in nb.cells
      if cell.cell_type == 'code'
      for o in cell.outputs
  )
  assert 'layer1_0/conv1/kernel' in text  # The sparsity report.
  # Resumed: only the missing round was trained.
  assert f'Round {last} done.' in text
  assert 'Round 0 done.' not in text
