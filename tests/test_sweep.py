"""sslprune_jax.sweep (launch/sweep.py): expansion, checks, the three
output modes, Figure 3 as a sweep; and the report's globs and runs split
by rounds."""

import csv
import io
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from absl import flags
import pytest

from sslprune_jax import config_lib
from sslprune_jax import preemption
from sslprune_jax import report
from sslprune_jax import runner
from sslprune_jax import figure3
from sslprune_jax import sweep
from sslprune_jax.sweep import __main__ as cli
from test_imp import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

RETRAIN = [
    '--config=configs/retrain.py:figure3',
    '--objectives=labels,rotnet',
    '--seeds=0,1',
    '--inits=winning_ticket,reinit',
    '--rounds=0,3',
    '--set=source.workdir={root}/../prune/{objective}_seed{seed}',
]


@pytest.fixture(autouse=True)
def _in_repository_root(monkeypatch):
  # Config paths are relative to the repository root, as on the command
  # line.
  monkeypatch.chdir(ROOT)


def plan(*argv):
  return sweep.plan(cli.spec_of(cli.parse(list(argv))))


def run_sweep(capsys, *argv, execute=None):
  """sweep.main(argv) -> (exit code, stdout, stderr)."""
  kwargs = {'execute': execute} if execute else {}
  code = cli.sweep(cli.parse(list(argv)), **kwargs)
  out, err = capsys.readouterr()
  return code, out, err


def commands(out):
  """The commands of --print's output, split as a shell would."""
  return [
      shlex.split(line)
      for line in out.splitlines()
      if line and not line.startswith('#')
  ]


def mark_complete(workdir):
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  (pathlib.Path(workdir) / runner.COMPLETE).write_text('{}\n')


def test_runs_are_the_product_of_the_axes(capsys, tmp_path):
  argv = [
      '--config=configs/{objective}.py:quick',
      f'--workdir={tmp_path}',
      '--objectives=labels,rotnet',
      '--seeds=0,1,2',
      '--grid=pruning.fraction=0.2,0.5',
      '--grid=train.decay_epochs=(1,2),(3,)',
      '--set=log_every_steps=7',
      '--set=data.data_dir={root}/data/{objective}_{seed}',
  ]
  runs = plan(*argv)
  assert len(runs) == 2 * 3 * 2 * 2
  assert len({run.workdir for run in runs}) == len(runs)
  assert runs[0].name == 'labels_seed0_fraction0.2_decay_epochs1-2'
  assert runs[-1].name == 'rotnet_seed2_fraction0.5_decay_epochs3'
  last = runs[-1]
  assert last.workdir == f'{tmp_path}/{last.name}'
  assert last.config == 'configs/rotnet.py:quick'
  assert dict(last.overrides) == {
      'seed': '2',
      'pruning.fraction': '0.5',
      'train.decay_epochs': '(3,)',
      'log_every_steps': '7',
      'data.data_dir': f'{tmp_path}/data/rotnet_2',
  }
  config = sweep.parse_config(last.config, last.overrides)
  assert config.task.name == 'rotnet' and config.seed == 2
  assert config.train.decay_epochs == (3,)
  assert config.pruning.fraction == 0.5 and config.log_every_steps == 7

  # --print: one command per run, in order, that parses back to its flags.
  code, out, _ = run_sweep(capsys, *argv)
  assert code == 0
  printed = commands(out)
  assert [c[:3] for c in printed] == [
      ['python', '-m', 'sslprune_jax.main']
  ] * len(runs)
  assert [c[3:] for c in printed] == [run.args() for run in runs]
  assert "'--config.train.decay_epochs=(3,)'" in out.splitlines()[-1]
  code, out, _ = run_sweep(
      capsys, *argv, '--launcher=sbatch launch/slurm.sbatch'
  )
  assert commands(out)[0][:2] == ['sbatch', 'launch/slurm.sbatch']
  assert commands(out)[0][2:] == runs[0].args()


def test_evaluation_axes_and_placeholders(tmp_path):
  runs = plan(*RETRAIN, f'--workdir={tmp_path}/retrain')
  assert len(runs) == 2 * 2 * 2 * 2
  run = runs[-1]
  assert run.name == 'rotnet_seed1_reinit_round3'
  config = sweep.parse_config(run.config, run.overrides)
  assert config.run == 'retrain' and config.seed == 1
  assert config.source.rounds == (3,) and config.source.init == 'reinit'
  # {root}/.. resolved, here and on a bucket.
  assert config.source.workdir == f'{tmp_path}/prune/rotnet_seed1'
  run = plan(*RETRAIN, '--workdir=gs://bucket/fig3/retrain/')[0]
  assert (
      run.workdir
      == 'gs://bucket/fig3/retrain/labels_seed0_winning_ticket_round0'
  )
  assert dict(run.overrides)['source.workdir'] == (
      'gs://bucket/fig3/prune/labels_seed0'
  )
  assert sweep.split_values("1,(2, 3),'a,b',[4]") == [
      '1',
      '(2, 3)',
      "'a,b'",
      '[4]',
  ]


@pytest.mark.parametrize(
    'argv, message',
    [
        (
            [
                '--config=configs/labels.py:quick',
                '--set=train.num_epoch=2',
                '--grid=seeed=1,2',
            ],
            r'has no field seeed \(--grid; did you mean seed\?\)(.|\n)*has no '
            r'field train.num_epoch \(--set; did you mean train.num_epochs\?\)',
        ),
        (
            [
                '--config=configs/labels.py:quick',
                '--seeds=0,1',
                '--set=train.num_epochs=two',
                '--set=pruning.num_rounds=1.5',
            ],
            r'--config.train.num_epochs=two: could not convert string to float: '
            r"'two'(.|\n)*--config.pruning.num_rounds=1.5",
        ),
        (
            ['--config=configs/labels.py:quick', '--objectives=labels,rotnet'],
            r'--objectives fills \{objective\}, but neither --config nor a --set',
        ),
        (
            ['--config=configs/{objective}.py:quick', '--seeds=0'],
            r'\{objective\} in --config needs --objectives',
        ),
        (
            [
                '--config=configs/labels.py:quick',
                '--seeds=0',
                '--set=data.data_dir=/d/{seeds}',
            ],
            r'Unknown placeholder \{seeds\} in --set data.data_dir',
        ),
        (
            ['--config=configs/labels.py:quick', '--inits=reinit'],
            r'--inits sets source.init, which configs/labels.py:quick has not',
        ),
        (
            ['--config=configs/retrain.py:quick', '--inits=reinti'],
            r"Unknown --inits \['reinti'\]",
        ),
        (
            ['--config=configs/labels.py:quick', '--rounds=1,2'],
            r'has no source: for the number of rounds of a pruning run, use --grid '
            r'pruning.num_rounds=3,5',
        ),
        (
            ['--config=configs/labels.py:quick', '--seeds=0,1,0'],
            r'Several runs would share a workdir \(seed0\)',
        ),
        (
            ['--config=configs/labels.py:quick', '--grid=data.name=a b,a-b'],
            r'Several runs would share a workdir \(name-a-b\)',
        ),
        (
            ['--config=configs/labels.py:quick', '--seeds=1', '--set=seed=2'],
            r'seed is given by both --seeds and --set',
        ),
        (
            ['--config=configs/nothere.py:quick'],
            r'No config file configs/nothere',
        ),
        (['--config=configs/labels.py:slow'], r"Unknown variant 'slow'"),
    ],
)
def test_bad_sweeps_stop_before_anything_runs(capsys, tmp_path, argv, message):
  calls = []
  code, out, err = run_sweep(
      capsys,
      *argv,
      f'--workdir={tmp_path}',
      '--local',
      execute=lambda command: calls.append(command) or 0,
  )
  assert code == 2 and not calls and not out
  assert re.search(message, err), err


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--workdir=/w'], r'--config must have a value'),
        (['--config=configs/labels.py:quick'], r'--workdir must have a value'),
        (
            ['--config=c', '--workdir=/w', '--print', '--local'],
            r'--print, --write and --local: give at most one',
        ),
        (['--config=c', '--workdir=/w', '--seed=1'], r'Unknown command line'),
    ],
)
def test_malformed_command_lines_are_flag_errors(argv, message):
  with pytest.raises(flags.Error, match=message):
    cli.parse(argv)


def imported_modules(stderr: str) -> list[str]:
  """The modules a `python -X importtime` run imported, from its stderr."""
  return re.findall(r'^import time:.*\|\s*([\w.]+)$', stderr, re.M)


def test_the_launch_script_is_the_command(tmp_path):
  """`python launch/sweep.py` runs the package's command: its --help, its
  flags and its exit codes."""
  script = [sys.executable, str(ROOT / 'launch' / 'sweep.py')]
  # absl's --help exits 1.
  shown = subprocess.run(
      [*script, '--help'], capture_output=True, text=True
  ).stdout
  assert 'Many runs of one config' in shown and '--[no]local' in shown
  printed = subprocess.run(
      [
          *script,
          '--config=configs/labels.py:quick',
          f'--workdir={tmp_path}',
          '--seeds=0,1',
      ],
      capture_output=True,
      text=True,
      check=True,
  ).stdout
  assert [c[3:] for c in commands(printed)] == [
      run.args()
      for run in plan(
          '--config=configs/labels.py:quick',
          f'--workdir={tmp_path}',
          '--seeds=0,1',
      )
  ]
  refused = subprocess.run(
      [
          sys.executable,
          '-X',
          'importtime',
          *script[1:],
          '--config=configs/labels.py:quick',
          f'--workdir={tmp_path}',
          '--inits=reinit',
      ],
      capture_output=True,
      text=True,
  )
  assert refused.returncode == 2 and 'has not' in refused.stderr
  # Without loading JAX (seconds).
  imported = imported_modules(refused.stderr)
  assert 'absl.flags' in imported and 'jax' not in imported


def test_configs_are_found_in_the_package_away_from_the_checkout(
    capsys, tmp_path, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  code, out, err = run_sweep(
      capsys,
      '--config=configs/{objective}.py:quick',
      '--objectives=labels,rotnet',
      f'--workdir={tmp_path}/runs',
      '--set=train.num_epochs=2',
  )
  assert code == 0, err
  # The commands keep configs/..., which main.py finds the same way.
  assert [c[3] for c in commands(out)] == [
      '--config=configs/labels.py:quick',
      '--config=configs/rotnet.py:quick',
  ]


def test_complete_runs_are_skipped_in_every_mode(capsys, tmp_path):
  argv = [
      '--config=configs/labels.py:quick',
      '--seeds=0,1,2',
      f'--workdir={tmp_path}',
  ]
  runs = plan(*argv)
  mark_complete(runs[1].workdir)
  code, out, _ = run_sweep(capsys, *argv)
  assert code == 0
  assert [c[3:] for c in commands(out)] == [runs[0].args(), runs[2].args()]
  assert f'# complete, skipped: {runs[1].workdir}' in out

  args_file = tmp_path / 'args.txt'
  code, out, _ = run_sweep(capsys, *argv, f'--write={args_file}')
  assert code == 0
  lines = args_file.read_text().splitlines()
  assert [shlex.split(line) for line in lines] == [
      runs[0].args(),
      runs[2].args(),
  ]
  assert (
      'sbatch --array=1-2 launch/slurm.sbatch ' f'--args-file={args_file}'
  ) in out
  assert f'# complete, skipped: {runs[1].workdir}' in out
  code, out, _ = run_sweep(
      capsys,
      *argv,
      f'--write={args_file}',
      '--launcher=sbatch --gres=gpu:8 launch/slurm.sbatch',
  )
  assert (
      f'sbatch --array=1-2 --gres=gpu:8 launch/slurm.sbatch '
      f'--args-file={args_file}'
  ) in out
  code, _, err = run_sweep(
      capsys, *argv, f'--write={args_file}', '--launcher=srun'
  )
  assert code == 2 and '--launcher must be an sbatch command' in err

  calls = []
  code, out, _ = run_sweep(
      capsys,
      *argv,
      '--local',
      execute=lambda command: calls.append(command) or 0,
  )
  assert code == 0
  assert [c[3:] for c in calls] == [runs[0].args(), runs[2].args()]
  assert '2 runs finished, 1 were complete' in out

  for run in runs:
    mark_complete(run.workdir)
  code, out, _ = run_sweep(capsys, *argv, f'--write={args_file}')
  assert args_file.read_text() == '' and 'Nothing to submit' in out


def test_local_runs_in_order_stops_at_the_first_failure_and_resumes(
    capsys, tmp_path
):
  argv = [
      '--config=configs/{objective}.py:quick',
      '--objectives=labels,rotnet',
      '--seeds=0,1',
      f'--workdir={tmp_path}',
      '--local',
  ]
  runs = plan(*argv[:-1])
  calls, codes = [], {}

  def fake(command):
    """Exits with codes[name] (0 by default), completing the run on 0."""
    calls.append(command)
    workdir = command[command.index('-m') + 3].split('=', 1)[1]
    code = codes.get(pathlib.Path(workdir).name, 0)
    if not code:
      mark_complete(workdir)
    return code

  assert sweep.PREEMPTED == preemption.EXIT_CODE == 75
  codes['labels_seed1'] = sweep.PREEMPTED
  code, out, _ = run_sweep(capsys, *argv, execute=fake)
  assert code == 75
  assert [c[:3] for c in calls] == [
      [sys.executable, '-m', 'sslprune_jax.main']
  ] * 2
  assert [c[3:] for c in calls] == [runs[0].args(), runs[1].args()]
  # What was run is what was printed.
  assert f'[2/4] {shlex.join(calls[1])}' in out
  assert 'was preempted after saving a checkpoint (exit code 75)' in out
  assert '1 runs finished, 0 were complete, 2 not started' in out

  # Run again: the finished run is skipped, the preempted one resumes, the
  # next fails and the sweep stops with its code.
  calls.clear()
  codes.update({'labels_seed1': 0, 'rotnet_seed0': 3})
  code, out, _ = run_sweep(capsys, *argv, execute=fake)
  assert code == 3
  assert [c[3:] for c in calls] == [runs[1].args(), runs[2].args()]
  assert f'{runs[2].workdir} failed (exit code 3)' in out

  calls.clear()
  codes.clear()
  code, out, _ = run_sweep(capsys, *argv, execute=fake)
  assert code == 0 and [c[3:] for c in calls] == [
      runs[2].args(),
      runs[3].args(),
  ]
  assert 'Sweep done: 2 runs finished, 2 were complete.' in out


def test_run_command_returns_exit_codes_and_passes_sigterm_on(tmp_path):
  python = [sys.executable, '-c']
  assert sweep.run_command(python + ['raise SystemExit(3)']) == 3
  assert (
      sweep.run_command(
          python + ['import os, signal; os.kill(os.getpid(), signal.SIGKILL)']
      )
      == 128 + signal.SIGKILL
  )
  # A run that saves and exits 75 on SIGTERM, as main.py does, gets the
  # sweep's SIGTERM.
  ready = tmp_path / 'ready'
  child = (
      'import pathlib, signal, sys, time\n'
      'signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))\n'
      f'pathlib.Path({str(ready)!r}).touch()\n'
      'time.sleep(60)\n'
      'sys.exit(1)\n'
  )

  def preempt():
    while not ready.exists():
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  def ignore(*_):
    pass

  # Should the signal come early, it must not end the tests.
  previous = signal.signal(signal.SIGTERM, ignore)
  try:
    threading.Thread(target=preempt, daemon=True).start()
    assert sweep.run_command(python + [child]) == 75
    assert signal.getsignal(signal.SIGTERM) is ignore  # Put back.
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_local_runs_main_for_real(capsys, tmp_path, data_dir, monkeypatch):
  # The run's process needs no more than one device, which compiles faster.
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  tiny = {
      'data.data_dir': data_dir,
      'data.train_split': 'train[:256]',
      'data.eval_split': 'test[:200]',
      'data.shuffle_buffer': 256,
      'model.width': 0.125,
      'train.num_epochs': 1.0,
      'train.eval_batch_size': 200,
      'pruning.num_rounds': 1,
      'pruning.rewind_samples': 128,
      'checkpoint_every_steps': 0,
  }
  code, out, _ = run_sweep(
      capsys,
      '--config=configs/labels.py:quick',
      '--seeds=3',
      f'--workdir={tmp_path}',
      '--local',
      *(f'--set={k}={v}' for k, v in tiny.items()),
  )
  assert code == 0, out
  workdir = tmp_path / 'seed3'
  assert runner.is_complete(str(workdir))
  assert json.loads((workdir / 'config.json').read_text())['seed'] == 3
  rows = list(
      csv.DictReader(io.StringIO((workdir / 'results.csv').read_text()))
  )
  assert [r['round'] for r in rows] == ['0', '1']
  code, out, _ = run_sweep(
      capsys,
      '--config=configs/labels.py:quick',
      '--seeds=3',
      f'--workdir={tmp_path}',
      '--local',
  )
  assert code == 0 and '0 runs finished, 1 were complete' in out


def _documented_commands():
  """The Figure 3 commands of sweep.py's docstring: the three sweeps' argv
  and the report's (directory, argv)."""
  text = re.sub(r'\\\n\s*', '', cli.__doc__)
  sweeps = [
      shlex.split(line)[2:]
      for line in text.splitlines()
      if line.strip().startswith('python launch/sweep.py')
  ]
  directory, command = re.search(
      r'\(cd (\S+) && (python -m .*)\)', text
  ).groups()
  return sweeps, (directory, shlex.split(command))


def test_figure3_sweeps_make_the_runs_of_figure3_py():
  sweeps, _ = _documented_commands()
  assert len(sweeps) == 4 and all('--local' in argv for argv in sweeps)
  ours = [
      (run.workdir, sweep.parse_config(run.config, run.overrides))
      for argv in sweeps
      for run in plan(*argv)
  ]
  theirs = [
      (workdir, config)
      for runs in figure3.curves('/elsewhere', 3).values()
      for config, workdir in runs
  ]

  def canonical(runs):
    # A source workdir stands for its run's task and seed.
    sources = {
        workdir: (config.task.name, config.seed)
        for workdir, config in runs
        if config.run == 'prune'
    }
    out = []
    for _, config in runs:
      config = config.to_dict()
      if 'source' in config:
        config['source']['workdir'] = sources[config['source']['workdir']]
      out.append(repr(config))
    return sorted(out)

  assert len(ours) == len(theirs) == 27
  assert canonical(ours) == canonical(theirs)


def test_figure3_variants_have_the_settings_of_figure3():
  """What figure3.py ran before its settings moved to the configs."""

  def previous(task, train_images):
    config = config_lib.quick(config_lib.base(task))
    config.update_from_flattened_dict(
        {
            'data.train_split': f'train[:{train_images}]',
            'data.eval_split': 'test[:5000]',
            'train.eval_batch_size': 1000,
            'pruning.fraction': 0.6,
            'pruning.num_rounds': 5,
            'pruning.rewind_samples': 1280,
            'log_every_steps': 100,
            'checkpoint_every_steps': 0,
        }
    )
    return config

  def same(a, b):
    # Types too: 1280 is not 1280.0.
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(
        b.to_dict(), sort_keys=True
    )

  rotnet = previous('rotnet', 3000)
  rotnet.train.batch_size = 32
  rotnet.train.eval_batch_size = 500
  assert same(load_config('figure3', 'labels'), previous('labels', 6000))
  assert same(load_config('figure3', 'rotnet'), rotnet)
  retrain = load_config('figure3', 'retrain')
  assert retrain.source.init == 'winning_ticket'
  del retrain.source
  retrain.run = 'prune'
  assert same(retrain, previous('labels', 6000))


def _fake_run(path, seed, rows, **source):
  """A workdir with config.json and results.csv: rows of (round, acc)."""
  path.mkdir(parents=True)
  (path / 'config.json').write_text(
      json.dumps(
          {
              'seed': seed,
              'run': 'retrain',
              'task': {'name': 'labels'},
              'source': {
                  'workdir': f'/prune/seed{seed}',
                  'rounds': [],
                  'init': 'reinit',
                  **source,
              },
          }
      )
  )
  lines = ['round,fraction_left,test_accuracy']
  lines += [f'{r},{0.4 ** r},{acc}' for r, acc in rows]
  (path / 'results.csv').write_text('\n'.join(lines) + '\n')


def test_report_puts_per_round_runs_of_a_seed_together(tmp_path):
  accuracy = {
      (0, 0): 0.9,
      (0, 1): 0.8,
      (0, 2): 0.7,
      (1, 0): 0.92,
      (1, 1): 0.84,
      (1, 2): 0.73,
  }
  for (seed, r), acc in accuracy.items():
    if (seed, r) != (1, 1):  # Seed 1's round 1 is not done yet.
      _fake_run(
          tmp_path / f'reinit_seed{seed}_round{r}', seed, [(r, acc)], rounds=[r]
      )
  _fake_run(tmp_path / 'reinit_seed2', 2, [(0, 0.94), (1, 0.86)])
  curves = report.parse_curves(
      [f'reinit={tmp_path}/reinit_seed*_round*,{tmp_path}/reinit_seed2']
  )
  runs = curves['reinit']
  assert [run.config['seed'] for run in runs] == [0, 1, 2]
  assert [row['round'] for row in runs[0].rows] == [0, 1, 2]
  assert runs[0].config['source']['rounds'] == [0, 1, 2]
  rows = report.summarize(runs, 'test_accuracy')
  # Rounds every seed has: 0 (three seeds) and, matched by number, not 1
  # (seed 1 lacks it) nor 2 (seed 2 lacks it).
  assert [r['round'] for r in rows] == [0]
  assert rows[0]['mean'] == pytest.approx(0.92) and rows[0]['n'] == 3
  rows = report.summarize(runs[:2], 'test_accuracy')
  assert [(r['round'], r['n']) for r in rows] == [(0, 2), (2, 2)]
  assert rows[1]['mean'] == pytest.approx(0.715)
  assert rows[1]['fraction_left'] == pytest.approx(0.16)
  _, markdown = report.tables(
      {'two': runs[:2], 'one': runs[2:]}, 'test_accuracy'
  )
  assert '| 40.00% |  | 0.8600 |' in markdown
  assert '| 16.00% | 0.7150 ± 0.0150 |  |' in markdown

  _fake_run(
      tmp_path / 'again' / 'reinit_seed0_round1', 0, [(1, 0.5)], rounds=[1]
  )
  with pytest.raises(ValueError, match='Round 1 of seed 0 is in both'):
    report.parse_curves(
        [
            f'x={tmp_path}/reinit_seed0_round*,'
            f'{tmp_path}/again/reinit_seed0_round1'
        ]
    )
  with pytest.raises(FileNotFoundError, match='matches no directory'):
    report.parse_curves([f'x={tmp_path}/nothing_*'])


def test_documented_report_command_finds_the_sweeps_runs(tmp_path, monkeypatch):
  sweeps, (directory, command) = _documented_commands()
  for argv in sweeps[1:]:
    for run in plan(*argv):
      workdir = run.workdir.replace(directory, str(tmp_path), 1)
      config = sweep.parse_config(run.config, run.overrides)
      _fake_run(
          pathlib.Path(workdir),
          config.seed,
          [(0, 0.9), (1, 0.8)],
          init=config.source.init,
          mask=config.source.mask,
      )
  monkeypatch.chdir(tmp_path)
  specs = [
      arg.split('=', 1)[1] for arg in command if arg.startswith('--curve=')
  ]
  curves = report.parse_curves(specs)
  assert list(curves) == [
      f'{source}, {init}'
      for source in ('labels', 'rotnet', 'random', 'random per-layer')
      for init in ('winning ticket', 'reinit')
      if (source, init) != ('random', 'winning ticket')
  ]
  for runs in curves.values():
    assert sorted(run.config['seed'] for run in runs) == [0, 1, 2]
    assert len({run.config['source']['init'] for run in runs}) == 1
