"""A plain (not editable) install runs configs by name, from anywhere."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_package_runs_a_config_without_a_checkout(tmp_path, data_dir):
  subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'wheel',
          '-q',
          '--no-deps',
          '--no-build-isolation',
          '-w',
          str(tmp_path / 'wheel'),
          str(ROOT),
      ],
      check=True,
      timeout=600,
  )
  (wheel,) = (tmp_path / 'wheel').glob('sslprune_jax-*.whl')
  # The dependencies come from this environment (a path file names its
  # site-packages: `--system-site-packages` would give the base
  # interpreter's instead); the package from the wheel alone.
  venv = tmp_path / 'venv'
  subprocess.run(
      [sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300
  )
  python = str(venv / 'bin' / 'python')
  (site_packages,) = venv.glob('lib/python*/site-packages')
  (site_packages / 'dependencies.pth').write_text(
      '\n'.join(p for p in sys.path if p.endswith('site-packages')) + '\n'
  )
  subprocess.run(
      [python, '-m', 'pip', 'install', '-q', '--no-deps', str(wheel)],
      check=True,
      timeout=600,
  )
  away = tmp_path / 'elsewhere'
  away.mkdir()
  where = subprocess.run(
      [
          python,
          '-c',
          'import sslprune_jax.config_lib as c; '
          'print(c.__file__); c.load("exemplar", "quick")',
      ],
      cwd=away,
      capture_output=True,
      text=True,
      check=True,
      timeout=300,
  )
  assert str(venv) in where.stdout
  overrides = {
      'data.train_split': 'train[:512]',
      'data.eval_split': 'test[:200]',
      'model.width': 0.125,
      'train.num_epochs': 1.0,
      'pruning.num_rounds': 1,
      'pruning.rewind_samples': 128,
      'data.data_dir': data_dir,
  }
  done = subprocess.run(
      [
          python,
          '-m',
          'sslprune_jax.main',
          '--config=configs/labels.py:quick',
          f'--workdir={tmp_path / "w"}',
          *[f'--config.{k}={v}' for k, v in overrides.items()],
      ],
      cwd=away,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / 'w' / 'results.csv').exists()


def _environment(**versions):
  """importlib.metadata.version over a made-up set of distributions."""
  import importlib.metadata

  def version(name):
    try:
      return versions[name.replace('-', '_')]
    except KeyError:
      raise importlib.metadata.PackageNotFoundError(name) from None

  return version


REQUIREMENTS = [
    'jax>=0.7',
    'tensorflow-cpu>=2.18',
    'clu>=0.0.12',
    'numpy',
    'pytest>=8; extra == "test"',
]


def test_colab_keeps_its_tensorflow_and_jax():
  from sslprune_jax import install

  colab = _environment(tensorflow='2.19.0', jax='0.7.2', numpy='2.0.2')
  # Colab's tensorflow provides tensorflow-cpu's module; only clu is added,
  # and the tests' extra is left out.
  assert install.missing(REQUIREMENTS, version=colab) == ['clu>=0.0.12']


def test_too_old_or_absent_packages_are_installed():
  from sslprune_jax import install

  old = _environment(
      tensorflow='2.15.1', jax='0.4.33', clu='0.0.12', numpy='1.26.4'
  )
  assert install.missing(REQUIREMENTS, version=old) == [
      'jax>=0.7',
      'tensorflow-cpu>=2.18',
  ]
  assert install.missing(REQUIREMENTS, version=_environment()) == [
      r for r in REQUIREMENTS if 'extra' not in r
  ]
  # This environment has everything.
  assert install.missing() == []
