"""Test-wide setup: eight simulated CPU devices, quiet TensorFlow."""

import contextlib
import fcntl
import os
import pickle

# Must be set before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import pytest

from sslprune_jax import data

# What trains a network end to end (a pruning run, the notebook, `main` in
# a subprocess, the benchmark's sections) is marked slow;
# `pytest -m "not slow"` runs the rest, the unit tests.
SLOW_FIXTURES = frozenset(
    {
        'labels_run',
        'labels_run_xla_defaults',
        'finished_run',
        'npid_run',
        'rotnet_run',
        'shrunk',
        'shared',
        'network',
        'exports',
    }
)
SLOW_MODULES = frozenset(
    {
        'test_bench',
        'test_imp',
        'test_multihost',
        'test_notebook',
        'test_rewind',
        'test_ssl_runs',
        'test_transfer',
    }
)


# Tests that share a module's expensive fixture run in one xdist worker
# (`--dist loadgroup`, pyproject.toml), which makes it once; xdist's default
# deals a module's tests out to every worker, and each would make its own.
GROUPED_FIXTURES = {
    'shared': 'reproduce',
    'npid_run': 'npid_run',
    'rotnet_run': 'rotnet_run',
    'network': 'export',
    'exports': 'export',
}


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups.
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module = item.module.__name__.rpartition('.')[2]
    if module in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
      item.add_marker(pytest.mark.slow)
    groups = {
        GROUPED_FIXTURES[f] for f in item.fixturenames if f in GROUPED_FIXTURES
    }
    if groups:
      item.add_marker(pytest.mark.xdist_group('_'.join(sorted(groups))))


def _shared_root(tmp_path_factory):
  """The session's temporary folder, shared by pytest-xdist's workers."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the session's processes.

  Many tests train the same shrunk networks, in this process, in other
  xdist workers or in `main` subprocesses (which inherit the variables);
  each program is compiled once. Every compilation is kept, not only those
  of over a second (JAX's default): a shrunk run's many small programs
  (steps, evaluation, masking, metrics) took 12 of the 32 s of a fresh
  process's run (20 s with them cached).
  """
  path = str(_shared_root(tmp_path_factory) / 'xla_cache')
  settings = {
      'jax_compilation_cache_dir': path,
      'jax_persistent_cache_min_compile_time_secs': 0,
      'jax_persistent_cache_min_entry_size_bytes': 0,
  }
  for name, value in settings.items():
    os.environ[name.upper()] = str(value)
    jax.config.update(name, value)
  return path


@pytest.fixture(scope='session')
def num_devices():
  n = jax.device_count()
  assert n == 8, f'expected 8 simulated devices, got {n}'
  return n


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data_dir holding Fashion-MNIST, prepared once per session."""
  root = _shared_root(tmp_path_factory)
  config = data.default_data_config('fashion_mnist')
  config.data_dir = str(root / 'tfds')
  # xdist's workers take turns: the first prepares, the others read it.
  with _locked(root / 'tfds.lock'):
    data.get_builder(config)
  return config.data_dir


@contextlib.contextmanager
def _locked(path):
  """Holds an exclusive lock on `path` across the session's processes."""
  with open(path, 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


@pytest.fixture(scope='session')
def labels_run(data_dir, tmp_path_factory):
  """The shrunk quick labels run of tests/test_imp.py, made once.

  Returns:
    (config, workdir, results). Tests read it and must not change it.
  """
  return _tiny_run(data_dir, tmp_path_factory, 'labels_quick')


@pytest.fixture(scope='session')
def labels_run_xla_defaults(data_dir, tmp_path_factory):
  """The run of `labels_run` with XLA's convolutions and default options
  (`model.conv_impl='xla'`, `train.xla_options='none'`) instead of the
  platform's measured choices."""
  return _tiny_run(
      data_dir,
      tmp_path_factory,
      'labels_quick_xla_defaults',
      **{'model.conv_impl': 'xla', 'train.xla_options': 'none'},
  )


def _tiny_run(data_dir, tmp_path_factory, name, **overrides):
  """(config, workdir, results) of tests/test_imp.py's shrunk quick run.

  Made once per session: the first xdist worker to ask runs it, the others
  wait for it and read its results.
  """
  from sslprune_jax import imp
  from test_imp import tiny_config

  root = _shared_root(tmp_path_factory) / 'runs'
  root.mkdir(exist_ok=True)
  workdir, saved = root / name, root / f'{name}.results.pkl'
  config = tiny_config(data_dir, **overrides)
  with _locked(root / f'{name}.lock'):
    if not saved.exists():
      saved.write_bytes(pickle.dumps(imp.run(config, str(workdir))))
  return config, workdir, pickle.loads(saved.read_bytes())
