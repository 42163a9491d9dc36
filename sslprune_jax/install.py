"""The project's dependencies an environment still lacks, for Colab.

  pip install --no-deps <the project: git+URL, wheel or folder>
  python -m sslprune_jax.install          # installs only what is missing
  python -m sslprune_jax.install --dry_run  # lists it

Colab comes with TensorFlow and a JAX built for its accelerators. A plain
`pip install` of the project would put `tensorflow-cpu` beside Colab's
`tensorflow` (two distributions of one `tensorflow` module, the later one
overwriting the other's files) and could swap Colab's JAX for another
build. Here a requirement counts as met when any installed distribution
that provides its module satisfies its version bounds (`PROVIDERS`), so
Colab's packages stay where they do and only what is missing or too old is
installed.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from typing import Callable, Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Distributions that install the same module as the requirement's.
PROVIDERS = {
    'tensorflow-cpu': (
        'tensorflow-cpu',
        'tensorflow',
        'tensorflow-gpu',
        'tf-nightly',
        'tf-nightly-cpu',
    ),
}


def _installed(name: str, version: Callable[[str], str]) -> list[str]:
  out = []
  for candidate in PROVIDERS.get(canonicalize_name(name), (name,)):
    try:
      out.append(version(candidate))
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def missing(
    requirements: Iterable[str] | None = None,
    *,
    version: Callable[[str], str] = importlib.metadata.version,
) -> list[str]:
  """The requirements (of `sslprune_jax`, extras left out) that no
  installed distribution meets, as pip arguments."""
  if requirements is None:
    requirements = importlib.metadata.requires('sslprune_jax') or []
  out = []
  for text in requirements:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({'extra': ''}):
      continue  # an extra's (tests) or another platform's
    found = _installed(req.name, version)
    if not any(req.specifier.contains(v, prereleases=True) for v in found):
      out.append(str(req))
  return out


def main(argv: list[str]) -> int:
  wanted = missing()
  if '--dry_run' in argv[1:]:
    print('\n'.join(wanted))
    return 0
  if not wanted:
    print('Every dependency is already installed.')
    return 0
  print('Installing:', ' '.join(wanted), flush=True)
  return subprocess.call(
      [sys.executable, '-m', 'pip', 'install', '-q', *wanted]
  )


if __name__ == '__main__':
  sys.exit(main(sys.argv))
