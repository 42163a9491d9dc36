"""A sweep's runs: its axes (the flags that give values), the product of
their values, each run's name, workdir and config overrides."""

import dataclasses
import itertools
import os
import posixpath
import re
from typing import Callable

# The {placeholders} of --config and --set, and the flags that give them.
PLACEHOLDERS = {
    'objective': '--objectives',
    'seed': '--seeds',
    'init': '--inits',
    'round': '--rounds',
    'root': '--workdir',
}


class SweepError(ValueError):
  """A sweep that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """A sweep as its command line gives it (see `sslprune_jax.sweep`'s
  `__main__`): each axis as the text of its flag, None where not given."""

  config: str
  workdir: str
  objectives: str | None = None
  seeds: str | None = None
  inits: str | None = None
  rounds: str | None = None
  grid: tuple[str, ...] = ()
  sets: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Axis:
  """One dimension of the sweep.

  Attributes:
    flag: the command-line flag it came from, for messages.
    values: its values, as given.
    field: the config field it sets (None: only a placeholder).
    placeholder: the {name} its value fills in --config and --set.
    label: value -> the run name's part.
    to_value: value -> the override's value.
  """

  flag: str
  values: tuple[str, ...]
  field: str | None
  placeholder: str | None
  label: Callable[[str], str]
  to_value: Callable[[str], str] = lambda v: v


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the sweep."""

  name: str
  workdir: str
  config: str
  # (field, value as on the command line), in order.
  overrides: tuple[tuple[str, str], ...]

  def args(self) -> list[str]:
    """The arguments to `python -m sslprune_jax.main`."""
    return [
        f'--config={self.config}',
        f'--workdir={self.workdir}',
        *(f'--config.{f}={v}' for f, v in self.overrides),
    ]


def split_values(text: str) -> list[str]:
  """Splits at the commas outside brackets and quotes: '1,(2,3)' -> ['1',
  '(2,3)']."""
  values, current, depth, quote = [], '', 0, None
  for c in text:
    if quote:
      quote = None if c == quote else quote
    elif c in '\'"':
      quote = c
    elif c in '([{':
      depth += 1
    elif c in ')]}':
      depth -= 1
    elif c == ',' and depth == 0:
      values.append(current.strip())
      current = ''
      continue
    current += c
  values.append(current.strip())
  return values


def field_and_value(text: str, flag: str) -> tuple[str, str]:
  field, sep, value = text.partition('=')
  if not sep or not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', field):
    raise SweepError(
        f'{flag} takes FIELD=VALUE (e.g. {flag}=train.'
        f'num_epochs=4), got {text!r}.'
    )
  return field, value


def values_of(text: str, flag: str, numbers: bool = False) -> tuple[str, ...]:
  """A comma-separated list of values (of integers >= 0 if `numbers`)."""
  values = tuple(split_values(text))
  if not all(values):
    raise SweepError(f'{flag} has an empty value: {text!r}.')
  if numbers and not all(re.fullmatch(r'\d+', v) for v in values):
    raise SweepError(f'{flag} takes integers >= 0, got {text!r}.')
  return tuple(str(int(v)) for v in values) if numbers else values


def _safe(text: str) -> str:
  """`text` as part of a directory name: runs of other characters than
  letters, digits and ._+- become '-'."""
  return re.sub(r'[^\w.+-]+', '-', text).strip('-') or '-'


def _grid_label(name: str) -> Callable[[str], str]:
  def label(value):
    value = _safe(value)
    return name + ('' if re.match(r'[\d.-]', value) else '-') + value

  return label


def axes(spec: Spec) -> list[Axis]:
  """The sweep's axes, in the order that names the runs."""
  out = []
  if spec.objectives is not None:
    out.append(
        Axis(
            '--objectives',
            values_of(spec.objectives, '--objectives'),
            None,
            'objective',
            _safe,
        )
    )
  if spec.seeds is not None:
    out.append(
        Axis(
            '--seeds',
            values_of(spec.seeds, '--seeds', True),
            'seed',
            'seed',
            lambda v: f'seed{v}',
        )
    )
  if spec.inits is not None:
    out.append(
        Axis(
            '--inits',
            values_of(spec.inits, '--inits'),
            'source.init',
            'init',
            _safe,
        )
    )
  if spec.rounds is not None:
    out.append(
        Axis(
            '--rounds',
            values_of(spec.rounds, '--rounds', True),
            'source.rounds',
            'round',
            lambda v: f'round{v}',
            lambda v: f'({v},)',
        )
    )
  grid = [field_and_value(text, '--grid') for text in spec.grid]
  leaves = [field.rsplit('.', 1)[-1] for field, _ in grid]
  for (field, values), leaf in zip(grid, leaves):
    # The last part of the field's name, unless two grid fields share it.
    name = leaf if leaves.count(leaf) == 1 else field
    out.append(
        Axis(
            '--grid',
            values_of(values, f'--grid {field}'),
            field,
            None,
            _grid_label(name),
        )
    )
  return out


def _fill(template: str, values: dict[str, str], where: str) -> str:
  """`template` with its {placeholders} replaced by `values`."""

  def replace(match):
    name = match.group(1)
    if name not in PLACEHOLDERS:
      raise SweepError(
          f'Unknown placeholder {{{name}}} in {where}; known: '
          + ', '.join(f'{{{p}}}' for p in PLACEHOLDERS)
          + '.'
      )
    if name not in values:
      raise SweepError(f'{{{name}}} in {where} needs {PLACEHOLDERS[name]}.')
    return values[name]

  filled = re.sub(r'\{([A-Za-z_]\w*)\}', replace, template)
  if template.startswith('{root}'):
    scheme, sep, path = filled.rpartition('://')
    filled = scheme + sep + posixpath.normpath(path)
  return filled


def expand(spec: Spec) -> list[Run]:
  """The runs of the sweep, in order (not yet checked against configs).

  Raises:
    SweepError: a malformed flag, a placeholder without its axis, a field
      given twice, or two runs with one workdir.
  """
  sweep_axes = axes(spec)
  sets = [field_and_value(text, '--set') for text in spec.sets]
  given: dict[str, str] = {}
  for flag, field in [(a.flag, a.field) for a in sweep_axes if a.field] + [
      ('--set', field) for field, _ in sets
  ]:
    if field in given:
      raise SweepError(f'{field} is given by both {given[field]} and {flag}.')
    given[field] = flag
  if spec.objectives is not None and not any(
      '{objective}' in t for t in [spec.config, *(v for _, v in sets)]
  ):
    raise SweepError(
        '--objectives fills {objective}, but neither --config nor a --set '
        "value has it (e.g. --config='configs/{objective}.py:quick')."
    )
  root = spec.workdir.rstrip('/') or '/'
  default_name = _safe(os.path.basename(spec.config).replace('.py', ''))
  runs = []
  for combo in itertools.product(*(a.values for a in sweep_axes)):
    values = {'root': root}
    values.update(
        (a.placeholder, v) for a, v in zip(sweep_axes, combo) if a.placeholder
    )
    overrides = [
        (a.field, a.to_value(v)) for a, v in zip(sweep_axes, combo) if a.field
    ]
    overrides += [
        (field, _fill(value, values, f'--set {field}')) for field, value in sets
    ]
    name = '_'.join(a.label(v) for a, v in zip(sweep_axes, combo))
    name = name or default_name
    runs.append(
        Run(
            name=name,
            workdir=posixpath.join(root, name),
            config=_fill(spec.config, values, '--config'),
            overrides=tuple(overrides),
        )
    )
  names = [run.name for run in runs]
  shared = sorted({n for n in names if names.count(n) > 1})
  if shared:
    raise SweepError(
        'Several runs would share a workdir (' + ', '.join(shared) + '): '
        'give each axis distinct values.'
    )
  return runs
