"""What every figure's command does: run its runs in order, read them back
as curves, and write its table, plot and verdicts.

A figure is a list of `Run`s (a config and the directory it runs in; a
config with `num_seeds` = k keeps seed s under `<directory>/seed_<s>/`)
and a map from each curve's name to the run it reads. Runs resume, so a
figure's command can be stopped and started again, and runs that two
figures share (the same config in the same directory) are trained once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from etils import epath
import ml_collections

from sslprune_jax import config_lib
from sslprune_jax import report as report_lib
from sslprune_jax import rundir
from sslprune_jax import runner
from sslprune_jax.reproduce import settings
from sslprune_jax.reproduce import verdicts as verdicts_lib


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: ml_collections.ConfigDict
  directory: str


def execute(runs: Sequence[Run]) -> None:
  """Runs (or resumes) each run in order."""
  for r in runs:
    print(f'\n== {r.name}: {r.directory}', flush=True)
    runner.run(r.config, r.directory)


def seed_dirs(run: Run) -> list[str]:
  """The directories of a run's seeds."""
  config = run.config
  k = config.get('num_seeds', 1)
  if k == 1:
    return [run.directory]
  return [
      str(rundir.seed_dir(run.directory, config.seed + i)) for i in range(k)
  ]


def load(runs: Run | Sequence[Run]) -> list[report_lib.Run]:
  """The seeds of a run (or of runs, one per seed), as `report` reads
  them."""
  runs = [runs] if isinstance(runs, Run) else runs
  return [report_lib.load_run(d) for r in runs for d in seed_dirs(r)]


def flatten(all_runs: dict) -> list[Run]:
  """Every run of a figure's map (values: a run or a list of runs), each
  directory once, in order."""
  out = {}
  for value in all_runs.values():
    for r in [value] if isinstance(value, Run) else value:
      out.setdefault(r.directory, r)
  return list(out.values())


def curve(runs: Sequence[report_lib.Run], metric: str) -> verdicts_lib.Curve:
  """seed -> fraction of weights left -> `metric`, from finished rounds."""
  out: verdicts_lib.Curve = {}
  for run in runs:
    seed = int(run.config['seed'])
    out[seed] = {
        float(row['fraction_left']): float(row[metric]) for row in run.rows
    }
  return out


def write(
    out_dir: str,
    curves: dict[str, list[report_lib.Run]],
    metric: str,
    found: Sequence[verdicts_lib.Verdict],
) -> dict[str, str]:
  """<metric>.csv/.md/.png (mean ± s.e. per curve) and verdicts.md."""
  paths = report_lib.write(curves, metric, out_dir)
  path = epath.Path(out_dir) / 'verdicts.md'
  path.write_text(verdicts_lib.table(found))
  paths['verdicts'] = str(path)
  return paths


def make(
    figure, workdir: str, out_dir: str, seeds: int, regime: dict
) -> dict[str, str]:
  """The common shape of a figure module (`fig<N>`, with its `NUMBER`,
  `TITLE`, `METRIC`, `CURVES`, `runs` and `findings`): runs everything
  `runs` lists (in order), reads the shown curves, judges the findings and
  writes the report (`report`)."""
  all_runs, wall = run_all(figure, workdir, seeds, regime)
  loaded = {c: load(all_runs[c]) for c in figure.CURVES or tuple(all_runs)}
  found = figure.findings(
      {c: curve(runs, figure.METRIC) for c, runs in loaded.items()}
  )
  return report(figure, out_dir, seeds, regime, wall, loaded, found)


def run_all(
    figure, workdir: str, seeds: int, regime: dict
) -> tuple[dict, float]:
  """Runs (or resumes) a figure's runs; returns them and the figure's wall
  time so far."""
  all_runs = figure.runs(workdir, seeds, **regime)
  name = label(f'fig{figure.NUMBER}', regime)
  wall = timed(workdir, name, 0.0)
  for r in flatten(all_runs):
    # Recorded run by run, so that a stopped command loses at most the
    # time of the run it was in.
    start = time.perf_counter()
    execute([r])
    wall = timed(workdir, name, time.perf_counter() - start)
  return all_runs, wall


def report(
    figure,
    out_dir: str,
    seeds: int,
    regime: dict,
    wall: float,
    loaded: dict[str, list[report_lib.Run]],
    found: Sequence[verdicts_lib.Verdict],
    preface: str = '',
) -> dict[str, str]:
  """Writes a figure's table, plot, verdicts and markdown section
  (`<out_dir>/section.md`, `preface` before its table)."""
  paths = write(out_dir, loaded, figure.METRIC, found)
  command = (
      f'python -m sslprune_jax.reproduce --figure={figure.NUMBER} '
      f'--workdir=W --seeds={seeds}{flags(regime)}'
  )
  text = section(
      figure.TITLE,
      command,
      wall,
      preface + epath.Path(paths['md']).read_text(),
      f'{figure.METRIC}.png',
      found,
  )
  (epath.Path(out_dir) / 'section.md').write_text(text)
  paths['section'] = str(epath.Path(out_dir) / 'section.md')
  return paths


def prune(
    workdir: str,
    objective: str,
    seeds: int,
    *,
    tag: str = '',
    overrides: dict | None = None,
    **regime,
) -> Run:
  """IMP with `objective` under the regime, in `<workdir>/prune/`; every
  figure that prunes with `objective` shares this run. `regime` changes
  `settings.apply`'s keywords, `overrides` (flattened config fields, named
  by `tag`) anything else; both show in the directory's name."""
  config = settings.config(objective, seeds=seeds, **regime)
  config.update_from_flattened_dict(overrides or {})
  name = label(objective, regime) + (f'_{tag}' if tag else '')
  return Run(f'prune {name}', config, str(epath.Path(workdir) / 'prune' / name))


def retrain(
    workdir: str,
    source: Run,
    init: str,
    mask: str = 'source',
    tag: str = '',
    overrides: dict | None = None,
) -> Run:
  """`source`'s pruned rounds trained again on labels, from `init`, with
  `mask` (see `sslprune_jax.evaluation.retrain`), seed s from seed s's
  masks. The dense round is left out: it is the labels run's round 0.
  `overrides` (flattened config fields) change the re-training config;
  `tag` names the change in the run's directory."""
  config = settings.apply(
      config_lib.load('retrain', 'quick'),
      seeds=source.config.num_seeds,
      fraction=source.config.pruning.fraction,
  )
  config.source.workdir = source.directory
  config.source.init = init
  config.source.mask = mask
  config.source.rounds = tuple(range(1, source.config.pruning.num_rounds + 1))
  config.update_from_flattened_dict(overrides or {})
  directory = (
      epath.Path(workdir)
      / 'retrain'
      / f'{epath.Path(source.directory).name}_{init}_{mask}'
      f'{"_" + tag if tag else ""}'
  )
  return Run(f'{source.name}: {init}, {mask}', config, str(directory))


def label(figure: str, regime: dict) -> str:
  """A figure's name, with what its regime changes (e.g. fig3_fraction0.2)."""
  return figure + ''.join(f'_{k}{v:g}' for k, v in sorted(regime.items()))


def flags(regime: dict) -> str:
  """The command-line flags of a changed regime."""
  return ''.join(f' --{k}={v:g}' for k, v in sorted(regime.items()))


def timed(workdir: str, figure: str, seconds: float) -> float:
  """Adds `seconds` to the figure's recorded wall time (runs resume, so a
  figure may take several invocations); returns the total."""
  path = epath.Path(workdir) / 'wall_seconds' / figure
  path.parent.mkdir(parents=True, exist_ok=True)
  total = (float(path.read_text()) if path.exists() else 0.0) + seconds
  path.write_text(f'{total:.1f}\n')
  return total


def section(
    title: str,
    command: str,
    wall_seconds: float,
    table: str,
    png: str,
    found: Sequence[verdicts_lib.Verdict],
) -> str:
  """A figure's part of docs/reproduction.md."""
  parts = [
      f'## {title}\n',
      f'Command: `{command}` ({wall_seconds / 60:.0f} '
      'minutes on 2 CPU cores).\n',
      table,
      f'![{title}]({png})\n',
  ]
  if found:
    parts.append(verdicts_lib.table(found))
  return '\n'.join(parts)
