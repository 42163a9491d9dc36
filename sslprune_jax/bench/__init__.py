"""The project's benchmark of its train step, pruning, rounds and input.

It measures the masked train step against the unmasked step, a matmul's
peak and PyTorch's step; pruning and rewinding; a run's between-round work
and startup; the input pipelines; several seeds in one program; compiler
options and convolution kernels. `python -m sslprune_jax.bench` runs it
(`__main__` holds the command line and describes each section);
`run(Settings(...))` does the same from Python.

The package re-exports its modules' names (loaded on first use), so that
`bench.run`, `bench.Settings` and the rest are importable from it.
"""

from __future__ import annotations

import importlib

# Name -> the module that owns it. The modules are imported on first use,
# not here: PyTorch's step process imports `torch_side` from this package,
# and must load neither JAX nor TensorFlow next to PyTorch.
_OWNERS = {
    **dict.fromkeys(
        (
            'SECTIONS',
            'NETWORKS',
            'MODELS',
            'TARGETS',
            'Settings',
            'parse_sections',
        ),
        'settings',
    ),
    **dict.fromkeys(
        (
            'PyTree',
            'quick_config',
            'Spec',
            'get_spec',
            'random_batch',
            '_model',
            '_optimizer',
            '_pruned_variables',
        ),
        'networks',
    ),
    **dict.fromkeys(
        ('UnmaskedTrainState', 'create_unmasked_state'), 'unmasked'
    ),
    **dict.fromkeys(
        ('xla_conv_flops', 'compiled_flops', 'measure_step'), 'timing'
    ),
    **dict.fromkeys(
        ('conv_profile', 'CONV_FORMS', 'conv_forms'), 'convolutions'
    ),
    **dict.fromkeys(
        ('section_step', 'section_flops', 'section_seeds'), 'steps'
    ),
    **dict.fromkeys(
        ('section_prune', 'section_round', 'section_startup'), 'rounds'
    ),
    **dict.fromkeys(('cifar_like_batches', 'section_pipeline'), 'pipeline'),
    **dict.fromkeys(
        ('section_options', 'section_kernels', 'section_pytorch'), 'variants'
    ),
    **dict.fromkeys(('environment', 'targets_of', 'run', 'summary'), 'suite'),
    # `models.resnet`'s, importable from here too.
    **dict.fromkeys(('BASE_WIDTHS', 'scale_width'), 'variants'),
}


def __getattr__(name: str):
  """Imports the module owning `name` and returns its `name`."""
  owner = _OWNERS.get(name)
  if owner is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{owner}'), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_OWNERS})
