"""The layering rule (README's Code map): a module imports only from layers
below its own, the leaves know nothing of each other, and configs import
only the config building blocks.

Read from the source (every import statement, those inside functions
too), so an edge the rule forbids fails here before it is ever run.
"""

import ast
import pathlib

import sslprune_jax

PACKAGE = pathlib.Path(sslprune_jax.__file__).parent
# Top-level modules and packages of sslprune_jax, by layer.
LAYERS = [
    # Utilities.
    {
        '',
        'checkpoint',
        'config_lib',
        'console',
        'host_memory',
        'kernels',
        'lock',
        'parallel',
        'preemption',
        'progress',
        'rundir',
        'voc',
        'xla_options',
    },
    # The leaves: pruning math, networks, objectives, input.
    {'data', 'models', 'pruning', 'tasks'},
    {'train'},
    # A pruning run and what reads one.
    {
        'experiment',
        'export',
        'imp',
        'lottery',
        'report',
        'round_state',
        'rounds',
        'source_network',
        'summaries',
        'validation',
    },
    {'evaluation'},
    # The commands.
    {
        'bench',
        'bench_torch',
        'figure3',
        'main',
        'pretrained',
        'reproduce',
        'runner',
        'sweep',
    },
]
LEAVES = 1
# Modules in another layer than their package: the data config's schema is
# plain config (stdlib and ml_collections), which config_lib builds on.
MODULE_LAYERS = {'sslprune_jax.data.schema': 0}
# What a config file may import.
CONFIGS_MAY_IMPORT = {'sslprune_jax.config_lib', 'sslprune_jax.data.schema'}
# Modules that only keep an old import path working for a module moved up.
SHIMS = {'sslprune_jax.evaluation.figure3': 'sslprune_jax.figure3'}


def _is_module(dotted):
  path = PACKAGE.parent.joinpath(*dotted.split('.'))
  return path.with_suffix('.py').exists() or path.is_dir()


def _imports(path):
  """The modules a file imports (`from a import b`: a.b where b is one)."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        name = f'{node.module}.{alias.name}'
        yield name if _is_module(name) else node.module


def _edges():
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    module = '.'.join(('sslprune_jax', *parts)).removesuffix('.__init__')
    for imported in _imports(path):
      if imported.split('.')[0] == 'sslprune_jax':
        yield module, imported


def _top(module):
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def _layer(module):
  if module in MODULE_LAYERS:
    return MODULE_LAYERS[module]
  top = _top(module)
  found = [i for i, names in enumerate(LAYERS) if top in names]
  assert found, f'{module} is in no layer: add it to LAYERS.'
  return found[0]


def _violations(edges):
  bad = []
  for module, imported in edges:
    if _top(module) == 'configs':
      if imported not in CONFIGS_MAY_IMPORT:
        bad.append(
            f'{module} -> {imported} (configs may import only '
            f'{sorted(CONFIGS_MAY_IMPORT)})'
        )
      continue
    if (
        _top(module) == _top(imported)
        and module not in MODULE_LAYERS
        or SHIMS.get(module) == imported
    ):
      continue
    mine, theirs = _layer(module), _layer(imported)
    if theirs > mine or (theirs == mine == LEAVES):
      bad.append(f'{module} (layer {mine}) -> {imported} (layer {theirs})')
  return bad


def test_every_import_goes_down_the_layers():
  bad = _violations(_edges())
  assert not bad, 'Imports the layering forbids:\n  ' + '\n  '.join(bad)


def test_the_rule_refuses_upward_and_sideways_imports():
  edges = [
      ('sslprune_jax.data.reading', 'sslprune_jax.train'),
      ('sslprune_jax.models.resnet', 'sslprune_jax.tasks.base'),
      ('sslprune_jax.configs.labels', 'sslprune_jax.evaluation.linear'),
      ('sslprune_jax.rounds', 'sslprune_jax.runner'),
      # Allowed: down the layers, and within a package.
      ('sslprune_jax.rounds', 'sslprune_jax.train'),
      ('sslprune_jax.data.iterators', 'sslprune_jax.data.reading'),
  ]
  assert len(_violations(edges)) == 4
