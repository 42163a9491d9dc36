#!/usr/bin/env bash
#
# Cloud TPU VM launcher for sslprune_jax: creates a TPU VM (one host or a pod
# slice), installs this checkout on every worker, runs a config on all of
# them at once, and fetches their logs.
#
# Usage: launch/tpu_vm.sh [--dry-run] COMMAND [OPTIONS]
#
# Commands:
#   create    request the TPU VM (a queued resource; --direct: at once)
#   install   copy this checkout to every worker and pip-install it there
#   run       start a config on all workers (detached); --wait follows it
#   logs      copy the workers' run logs to a local folder
#   status    the TPU VM's state and the runs on its workers
#   delete    delete the TPU VM (and its queued resource)
#   help      this text; `launch/tpu_vm.sh COMMAND --help` for one command
#
# Settings, as flags of any command or environment variables:
#   --name NAME        TPU_NAME          the TPU VM (required)
#   --zone ZONE        ZONE              its zone, e.g. us-central2-b (required)
#   --project ID       PROJECT           default: gcloud's configured project
#   --bucket BUCKET    BUCKET            GCS bucket (no gs://) holding the
#                                        data and the workdirs
#   --dry-run          DRY_RUN=1         print each gcloud command instead of
#                                        running it
#   ACCELERATOR_TYPE, TPU_VERSION, JAX_SPEC, TFDS_DATA_DIR: defaults of
#                  flags of one command (see its --help)
#   REMOTE_DIR     where the checkout goes on the workers, relative to the
#                  home folder (default: sslprune_jax)
#   REMOTE_PYTHON  a Python >= 3.11 already on the workers to install into
#                  and run with, e.g. python3.11; by default `install` makes
#                  a virtual environment, ~/sslprune_venv, with uv
#
# A missing setting is an error with exit status 2.
#
# gcloud reaches several workers at once only with its SSH key in an agent:
#   eval "$(ssh-agent -s)" && ssh-add ~/.ssh/google_compute_engine
#
# A full run on a v4-32 pod slice (4 hosts):
#
#   export TPU_NAME=sslprune ZONE=us-central2-b BUCKET=my-bucket
#   launch/tpu_vm.sh create --accelerator-type=v4-32
#   launch/tpu_vm.sh install
#   launch/tpu_vm.sh run --config=configs/rotnet.py \
#       --workdir=gs://my-bucket/runs/rotnet_seed0 --wait
#   launch/tpu_vm.sh logs
#   launch/tpu_vm.sh delete

set -euo pipefail

readonly SCRIPT="launch/tpu_vm.sh"
readonly REMOTE_LOGS="sslprune_logs"  # Per-worker log folder, in $HOME.

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
BUCKET="${BUCKET:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
TPU_VERSION="${TPU_VERSION:-}"
REMOTE_DIR="${REMOTE_DIR:-sslprune_jax}"
REMOTE_PYTHON="${REMOTE_PYTHON:-}"
REMOTE_PYTHON_VERSION="${REMOTE_PYTHON_VERSION:-3.11}"
readonly REMOTE_VENV="sslprune_venv"  # In $HOME, unless REMOTE_PYTHON is set.
DRY_RUN="${DRY_RUN:-}"

# ---------------------------------------------------------------------------
# Helpers.

usage_main() {
  # The header comment above, without the leading '# '.
  sed -n '3,/^$/{/^#/!d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"
}

# Prints a usage error and exits with status 2.
usage_error() {
  echo "${SCRIPT}${COMMAND:+ $COMMAND}: error: $*" >&2
  echo "See '${SCRIPT}${COMMAND:+ $COMMAND} --help'." >&2
  exit 2
}

die() {
  echo "${SCRIPT}${COMMAND:+ $COMMAND}: error: $*" >&2
  exit 1
}

is_dry_run() {
  [[ -n "$DRY_RUN" && "$DRY_RUN" != 0 && "$DRY_RUN" != false ]]
}

# Quotes one word for a POSIX shell, as Python's shlex.quote does: plain
# words stay as they are, others go in single quotes.
shq() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

# Quotes every argument and joins them with spaces.
shq_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shq "$word")"
  done
  printf '%s' "$out"
}

# Runs a command, or, under --dry-run, prints it quoted for a shell.
run_cmd() {
  if is_dry_run; then
    shq_all "$@"
    echo
  else
    "$@"
  fi
}

# `gcloud compute tpus tpu-vm ARGS... --zone=ZONE [--project=PROJECT]`.
tpu_vm() {
  tpus tpu-vm "$@"
}

# `gcloud compute tpus queued-resources ARGS... --zone=ZONE [...]`.
queued() {
  tpus queued-resources "$@"
}

tpus() {
  local cmd=(gcloud compute tpus "$@" --zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    cmd+=(--project="$PROJECT")
  fi
  run_cmd "${cmd[@]}"
}

# Whether the TPU VM was requested as a queued resource (of its own name);
# under --dry-run, prints the check and answers yes.
has_queued_resource() {
  if is_dry_run; then
    queued describe "$TPU_NAME" --format='value(name)'
    return 0
  fi
  queued describe "$TPU_NAME" --format='value(name)' > /dev/null 2>&1
}

# Sets VALUE to an option's value, from `--opt=value` or `--opt value`, and
# NSHIFT to the number of arguments that took.
VALUE=""
NSHIFT=1
take_value() {
  if [[ "$1" == *=* ]]; then
    VALUE="${1#*=}"
    NSHIFT=1
  elif (($# >= 2)); then
    VALUE="$2"
    NSHIFT=2
  else
    usage_error "$1 needs a value."
  fi
}

# Handles an option every command takes; returns 1 if $1 is not one.
common_option() {
  NSHIFT=1
  case "$1" in
    --name | --name=*) take_value "$@"; TPU_NAME="$VALUE" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$VALUE" ;;
    --project | --project=*) take_value "$@"; PROJECT="$VALUE" ;;
    --bucket | --bucket=*) take_value "$@"; BUCKET="$VALUE" ;;
    --dry-run) DRY_RUN=1 ;;
    *) return 1 ;;
  esac
}

# Exits with status 2 unless the setting is given. Args: its value, the flag
# that sets it, the environment variable that does (or ""), what it is.
require() {
  local value="$1" flag="$2" env="$3" what="$4"
  if [[ -z "$value" ]]; then
    usage_error "no ${what}: give ${flag}${env:+ or set ${env}}."
  fi
}

require_tpu() {
  require "$TPU_NAME" --name TPU_NAME "TPU VM name"
  require "$ZONE" --zone ZONE "zone"
}

# A path the workers can all reach: gs://... or an absolute path (a file
# system mounted on every worker).
check_shared_path() {
  local path="$1" what="$2"
  case "$path" in
    gs://?*) ;;
    /*) echo "${SCRIPT} ${COMMAND}: note: ${what} ${path} is a path on each" \
          "worker; all workers must share it (e.g. a mounted Filestore)." >&2 ;;
    *) usage_error "${what} must be on GCS (gs://...) or an absolute path" \
         "shared by all workers, got '${path}'." ;;
  esac
}

# The runtime version matching an accelerator type, for `create`; fails
# for a type it does not know (a newer generation needs its own runtime,
# which a base image would not be).
default_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# The run's files on a worker, as shell words for the remote command.
remote_log() {
  # shellcheck disable=SC2016  # $HOME expands on the workers.
  printf '"$HOME"/%s/%s' "$REMOTE_LOGS" "$(shq "$1")"
}

# The Python that runs the project on the workers, as shell words there.
remote_python() {
  if [[ -n "$REMOTE_PYTHON" ]]; then
    printf '%s' "$REMOTE_PYTHON"
  else
    # shellcheck disable=SC2016  # $HOME expands on the workers.
    printf '"$HOME"/%s/bin/python' "$REMOTE_VENV"
  fi
}

check_remote_settings() {
  if [[ ! "$REMOTE_DIR" =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ ]]; then
    usage_error "REMOTE_DIR must be a plain path relative to the home" \
      "folder, got '${REMOTE_DIR}'."
  fi
}

# ---------------------------------------------------------------------------
# create

usage_create() {
  cat <<EOF
Usage: ${SCRIPT} create [OPTIONS] [-- GCLOUD_ARGS...]

Requests the TPU VM as a queued resource of the same name, which Cloud TPU
fills when capacity is free (its state goes from WAITING_FOR_RESOURCES to
ACTIVE; '${SCRIPT} status' shows it; install once it is ACTIVE):
  gcloud compute tpus queued-resources create NAME --node-id=NAME \\
      --zone=ZONE --accelerator-type=TYPE --runtime-version=VERSION \\
      [--spot] [--valid-until-duration=DURATION]
With --direct, creates it at once instead, which fails when there is no
free capacity:
  gcloud compute tpus tpu-vm create NAME --zone=ZONE \\
      --accelerator-type=TYPE --version=VERSION [--spot | --preemptible]

Options:
  --accelerator-type TYPE  e.g. v4-8 (one host), v4-32 (4 hosts), v5p-64,
                           v5litepod-16, v6e-16 (ACCELERATOR_TYPE; required)
  --version VERSION        TPU runtime (TPU_VERSION); default by type:
                           tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5 (v5p),
                           v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e);
                           required for any other type
  --spot                   a Spot TPU: cheaper, may be preempted any time
  --valid-until DURATION   give the queued request up if not filled within
                           DURATION (e.g. 6h, 2d)
  --direct                 create at once (tpu-vm create), not queued
  --preemptible            with --direct: a preemptible TPU (the older kind
                           of Spot)
  --name, --zone, --project, --dry-run   as for every command
  -- GCLOUD_ARGS...        more flags for gcloud, e.g. --network=NETWORK or
                           --service-account=ACCOUNT

The workers read and write the bucket as the VM's service account (by
default the Compute Engine default service account): it needs read access
to the data and write access to the workdirs.
EOF
}

cmd_create() {
  local spot="" preemptible="" direct="" valid_until="" extra=()
  while (($#)); do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    NSHIFT=1
    case "$1" in
      -h | --help) usage_create; exit 0 ;;
      --accelerator-type | --accelerator-type=*)
        take_value "$@"; ACCELERATOR_TYPE="$VALUE" ;;
      --version | --version=* | --runtime-version | --runtime-version=*)
        take_value "$@"; TPU_VERSION="$VALUE" ;;
      --spot) spot=1 ;;
      --preemptible) preemptible=1 ;;
      --direct) direct=1 ;;
      --valid-until | --valid-until=*)
        take_value "$@"; valid_until="$VALUE" ;;
      --) shift; extra=("$@"); break ;;
      *) usage_error "unknown option '$1'." ;;
    esac
    shift "$NSHIFT"
  done
  require_tpu
  require "$ACCELERATOR_TYPE" --accelerator-type ACCELERATOR_TYPE \
    "accelerator type"
  if [[ -n "$spot" && -n "$preemptible" ]]; then
    usage_error "give --spot or --preemptible, not both."
  fi
  if [[ -z "$direct" && -n "$preemptible" ]]; then
    usage_error "--preemptible needs --direct (queued resources are --spot)."
  fi
  if [[ -n "$direct" && -n "$valid_until" ]]; then
    usage_error "--valid-until is for queued requests, not --direct."
  fi
  local version="$TPU_VERSION"
  if [[ -z "$version" ]] && ! version="$(default_version "$ACCELERATOR_TYPE")"
  then
    usage_error "no runtime version known for accelerator type" \
      "'${ACCELERATOR_TYPE}' (known: v2-v4, v5p, v5e/v5litepod, v6e); give" \
      "it with --version (see gcloud compute tpus versions list" \
      "--zone=${ZONE})."
  fi
  local args
  if [[ -n "$direct" ]]; then
    args=(create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE"
          --version="$version")
    if [[ -n "$preemptible" ]]; then args+=(--preemptible); fi
  else
    args=(create "$TPU_NAME" --node-id="$TPU_NAME"
          --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$version")
    if [[ -n "$valid_until" ]]; then
      args+=(--valid-until-duration="$valid_until")
    fi
  fi
  if [[ -n "$spot" ]]; then args+=(--spot); fi
  if [[ -n "$direct" ]]; then
    tpu_vm "${args[@]}" ${extra[@]+"${extra[@]}"}
    return
  fi
  queued "${args[@]}" ${extra[@]+"${extra[@]}"}
  echo "${SCRIPT} create: requested; '${SCRIPT} status' shows when it is" \
    "ACTIVE." >&2
}

# ---------------------------------------------------------------------------
# install

usage_install() {
  cat <<EOF
Usage: ${SCRIPT} install [OPTIONS]

Copies this checkout (its tracked files and untracked, not ignored ones, as
they are now) to ~/\$REMOTE_DIR on every worker, replacing what was there,
and installs it, editable, together with JAX for TPUs.

JAX needs Python >= 3.11, and the TPU images' python3 is older (Ubuntu
22.04's 3.10). So, by default, each worker gets uv (pip install --user uv)
and a virtual environment ~/${REMOTE_VENV} with Python
\$REMOTE_PYTHON_VERSION (default 3.11; uv downloads it), made once, into
which it installs:
  python3 -m uv pip install --python ~/${REMOTE_VENV}/bin/python \\
      -e ~/REMOTE_DIR 'jax[tpu]'
With REMOTE_PYTHON set (a Python >= 3.11 the image has), it installs with
that instead: REMOTE_PYTHON -m pip install -e ~/REMOTE_DIR 'jax[tpu]'.

Both ways download packages on every worker. For workers without access
to PyPI, give --wheels DIR: a folder of wheels, made where PyPI can be
reached, e.g. in the checkout:
  pip download -d DIR -c constraints.txt --only-binary=:all: \\
      --python-version 3.11 --platform manylinux2014_x86_64 \\
      . 'jax[tpu]' 'setuptools>=77'
(--python-version: the workers' REMOTE_PYTHON's). It is copied to
~/REMOTE_DIR.wheels on every worker and installed from there alone:
  REMOTE_PYTHON -m pip install --no-index --find-links ~/REMOTE_DIR.wheels \\
      -e ~/REMOTE_DIR 'jax[tpu]'
which needs REMOTE_PYTHON (uv would download its Python).

Options:
  --source DIR      the checkout to copy (default: the one holding this script)
  --jax-spec SPEC   the JAX requirement (JAX_SPEC; default: 'jax[tpu]'),
                    e.g. 'jax[tpu]==0.7.2'
  --wheels DIR      install from these wheels only (see above)
  --name, --zone, --project, --dry-run   as for every command

Run it again after changing the code; runs started afterwards use the new
code.
EOF
}

# Writes a gzipped tar of the checkout at $1 to $2.
make_archive() {
  local root="$1" out="$2"
  if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # What is in the working tree now, not only what is committed; files
    # deleted but not yet committed are left out.
    (
      cd "$root"
      git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' file; do
          if [[ -f "$file" ]]; then printf '%s\0' "$file"; fi
        done |
        tar --null -T - -czf "$out"
    )
  else
    tar -czf "$out" --exclude=.git --exclude=__pycache__ \
      --exclude='*.egg-info' -C "$root" .
  fi
}

cmd_install() {
  local source wheels='' jax_spec="${JAX_SPEC:-jax[tpu]}"
  source="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  while (($#)); do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    NSHIFT=1
    case "$1" in
      -h | --help) usage_install; exit 0 ;;
      --source | --source=*) take_value "$@"; source="$VALUE" ;;
      --jax-spec | --jax-spec=*) take_value "$@"; jax_spec="$VALUE" ;;
      --wheels | --wheels=*) take_value "$@"; wheels="$VALUE" ;;
      *) usage_error "unknown option '$1'." ;;
    esac
    shift "$NSHIFT"
  done
  require_tpu
  check_remote_settings
  [[ -f "$source/pyproject.toml" ]] ||
    usage_error "--source ${source} is not the project's checkout (no pyproject.toml)."
  if [[ -n "$wheels" ]]; then
    [[ -n "$REMOTE_PYTHON" ]] ||
      usage_error "--wheels needs REMOTE_PYTHON, a Python >= 3.11 on the" \
        "workers (uv would download one); see 'install --help'."
    compgen -G "${wheels}/*.whl" >/dev/null ||
      usage_error "--wheels ${wheels} holds no wheels (*.whl); see 'install --help'."
  fi

  local tmp archive
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064  # Expand $tmp now: it is local.
  trap "rm -rf '$tmp'" EXIT
  archive="$tmp/${REMOTE_DIR##*/}.tar.gz"
  if is_dry_run; then
    echo "# archive ${source} into ${archive}"
  else
    make_archive "$source" "$archive"
  fi
  tpu_vm scp "$archive" "${TPU_NAME}:${REMOTE_DIR}.tar.gz" --worker=all
  if [[ -n "$wheels" ]]; then
    if is_dry_run; then
      echo "# archive the wheels in ${wheels} into $tmp/wheels.tar.gz"
    else
      tar -czf "$tmp/wheels.tar.gz" -C "$wheels" .
    fi
    tpu_vm scp "$tmp/wheels.tar.gz" "${TPU_NAME}:${REMOTE_DIR}.wheels.tar.gz" \
      --worker=all
  fi

  # On each worker: unpack next to the old copy, swap, install.
  local remote python install
  python="$(remote_python)"
  if [[ -n "$wheels" ]]; then
    # shellcheck disable=SC2016  # $d expands on the workers.
    install='rm -rf "$d.wheels" && mkdir -p "$d.wheels"
tar -xzf "$d.wheels.tar.gz" -C "$d.wheels" && rm "$d.wheels.tar.gz"
'"${python}"' -m pip install --quiet --no-index --find-links "$d.wheels" -e "$d" '"$(shq "$jax_spec")"
  elif [[ -n "$REMOTE_PYTHON" ]]; then
    install="${python} -m pip install --quiet -e \"\$d\" $(shq "$jax_spec")"
  else
    # shellcheck disable=SC2016  # $HOME and $venv expand on the workers.
    install='venv="$HOME"/'"$REMOTE_VENV"'
if [ ! -x "$venv/bin/python" ]; then
  python3 -m pip install --quiet --user --upgrade uv
  python3 -m uv venv --quiet --python '"$(shq "$REMOTE_PYTHON_VERSION")"' "$venv"
fi
python3 -m uv pip install --quiet --python "$venv/bin/python" -e "$d" '"$(shq "$jax_spec")"
  fi
  # shellcheck disable=SC2016  # $HOME and $d expand on the workers.
  remote='set -eu
d="$HOME"/'"$REMOTE_DIR"'
rm -rf "$d.new"
mkdir -p "$d.new"
tar -xzf "$d.tar.gz" -C "$d.new"
rm -rf "$d" "$d.tar.gz"
mv "$d.new" "$d"
'"$install"'
'"$python"' -c "import sslprune_jax" && echo "$(hostname): installed in $d"'
  tpu_vm ssh "$TPU_NAME" --worker=all --command="$remote"
}

# ---------------------------------------------------------------------------
# run

usage_run() {
  cat <<EOF
Usage: ${SCRIPT} run --config=CONFIG --workdir=gs://... [OPTIONS] [MAIN_ARGS...]

Starts, on every worker at once (--worker=all), detached with nohup:
  TFDS_DATA_DIR=DATA_DIR ~/${REMOTE_VENV}/bin/python -m sslprune_jax.main \\
      --config=CONFIG --workdir=WORKDIR --distributed MAIN_ARGS...
(REMOTE_PYTHON in place of that Python if set; see 'install --help').
Each worker logs to ~/${REMOTE_LOGS}/RUN_NAME.log (appended to across
restarts) and writes the exit status to RUN_NAME.exit.

Options:
  --config CONFIG      e.g. configs/rotnet.py or configs/labels.py:imagenet
                       (required; relative to the checkout)
  --workdir DIR        checkpoints and results, shared by all workers: a GCS
                       path, gs://BUCKET/runs/NAME (required)
  --data-dir DIR       TFDS data dir holding the prepared datasets
                       (TFDS_DATA_DIR; default: gs://BUCKET/tensorflow_datasets)
  --run-name NAME      names the log files (default: the workdir's last part)
  --wait               follow worker 0's log until the run ends, and exit
                       with its status
  --name, --zone, --project, --bucket, --dry-run   as for every command
  MAIN_ARGS...         any other argument goes to sslprune_jax.main, e.g.
                       --config.seed=1 (after '--', all of them do)

Exit status of the run (see 'status', or --wait): 0 finished (the workdir
has a COMPLETE file; running it again does nothing), 1 error (the log says
what to change), 75 preempted after saving a checkpoint: run the same
command again to resume. A Spot TPU that was preempted must be deleted and
created (and installed) again first; the run resumes from its workdir.
EOF
}

cmd_run() {
  local config="" workdir="" data_dir="${TFDS_DATA_DIR:-}" run_name="" wait=""
  local main_args=()
  while (($#)); do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    NSHIFT=1
    case "$1" in
      -h | --help) usage_run; exit 0 ;;
      --config | --config=*) take_value "$@"; config="$VALUE" ;;
      --workdir | --workdir=*) take_value "$@"; workdir="$VALUE" ;;
      --data-dir | --data-dir=*) take_value "$@"; data_dir="$VALUE" ;;
      --run-name | --run-name=*) take_value "$@"; run_name="$VALUE" ;;
      --wait) wait=1 ;;
      --) shift; main_args+=("$@"); break ;;
      *) main_args+=("$1") ;;
    esac
    shift "$NSHIFT"
  done
  require_tpu
  check_remote_settings
  require "$config" --config "" "config"
  require "$workdir" --workdir "" "workdir"
  if [[ -z "$data_dir" && -n "$BUCKET" ]]; then
    data_dir="gs://${BUCKET}/tensorflow_datasets"
  fi
  require "$data_dir" "--data-dir (or --bucket)" "TFDS_DATA_DIR (or BUCKET)" \
    "TFDS data dir"
  check_shared_path "$workdir" "--workdir"
  check_shared_path "$data_dir" "--data-dir"
  workdir="${workdir%/}"
  if [[ -z "$run_name" ]]; then
    run_name="${workdir##*/}"
  fi
  if [[ ! "$run_name" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]]; then
    usage_error "--run-name must be letters, digits, '.', '_' and '-'," \
      "got '${run_name}'."
  fi

  local main_cmd log remote
  main_cmd="env $(shq "TFDS_DATA_DIR=${data_dir}") $(remote_python)"
  main_cmd+=" -m sslprune_jax.main $(shq_all "--config=${config}" \
    "--workdir=${workdir}" --distributed ${main_args[@]+"${main_args[@]}"})"
  log="$(remote_log "$run_name")"
  # On each worker: refuse to start a second copy of a running run, then
  # start it detached; the wrapper records its exit status.
  # shellcheck disable=SC2016  # $HOME, $log, $! expand on the workers.
  remote='set -eu
cd "$HOME"/'"$REMOTE_DIR"' || { echo "$(hostname): no ~/'"$REMOTE_DIR"': run '"$SCRIPT"' install first." >&2; exit 1; }
log='"$log"'
mkdir -p "$(dirname "$log")"
if [ -f "$log.pid" ] && [ ! -f "$log.exit" ] && kill -0 "$(cat "$log.pid")" 2>/dev/null; then
  echo "$(hostname): '"$run_name"' is still running (pid $(cat "$log.pid")); not starting it again." >&2
  exit 1
fi
rm -f "$log.exit"
echo "=== $(date -u +%FT%TZ) start on $(hostname) ===" >> "$log.log"
nohup bash -c '\''"$@"; echo $? > "$0.exit"'\'' "$log" '"$main_cmd"' >> "$log.log" 2>&1 < /dev/null &
echo $! > "$log.pid"
echo "$(hostname): started '"$run_name"' (pid $!), log ~/'"$REMOTE_LOGS/$run_name"'.log"'
  tpu_vm ssh "$TPU_NAME" --worker=all --command="$remote"

  if [[ -z "$wait" ]]; then
    if ! is_dry_run; then
      echo "Started ${run_name} on all workers. Follow it with" \
        "'${SCRIPT} status' and '${SCRIPT} logs --run-name=${run_name}'."
    fi
    return 0
  fi
  wait_for_run "$run_name"
}

# Follows worker 0's log until the run's process ends; exits with its status.
wait_for_run() {
  local run_name="$1" log remote status=0
  log="$(remote_log "$run_name")"
  # shellcheck disable=SC2016  # Expands on worker 0.
  remote='log='"$log"'
tail -n 50 -F --pid="$(cat "$log.pid")" "$log.log" 2>/dev/null || true
if [ -f "$log.exit" ]; then exit "$(cat "$log.exit")"; fi
echo "no exit status in $log.exit: the process was killed." >&2
exit 1'
  tpu_vm ssh "$TPU_NAME" --worker=0 --command="$remote" || status=$?
  if is_dry_run; then
    return 0
  fi
  case "$status" in
    0) echo "${run_name} finished." ;;
    75) echo "${run_name} was preempted after saving a checkpoint: run the" \
          "same '${SCRIPT} run ...' command again to resume." >&2 ;;
    *) echo "${run_name} ended with exit status ${status}; '${SCRIPT} logs" \
         "--run-name=${run_name}' fetches every worker's log." >&2 ;;
  esac
  exit "$status"
}

# ---------------------------------------------------------------------------
# logs

usage_logs() {
  cat <<EOF
Usage: ${SCRIPT} logs [OPTIONS]

Copies each worker's logs (~/${REMOTE_LOGS}/ on the workers) to
DEST/worker-<i>/, one worker at a time (gcloud cannot copy from several
workers at once).

Options:
  --dest DIR        local folder (default: tpu_logs/TPU_NAME)
  --run-name NAME   only this run's files (default: all runs)
  --workers N       the number of workers (default: asked from gcloud)
  --name, --zone, --project, --dry-run   as for every command
EOF
}

cmd_logs() {
  local dest="" run_name="" workers=""
  while (($#)); do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    NSHIFT=1
    case "$1" in
      -h | --help) usage_logs; exit 0 ;;
      --dest | --dest=*) take_value "$@"; dest="$VALUE" ;;
      --run-name | --run-name=*) take_value "$@"; run_name="$VALUE" ;;
      --workers | --workers=*) take_value "$@"; workers="$VALUE" ;;
      *) usage_error "unknown option '$1'." ;;
    esac
    shift "$NSHIFT"
  done
  require_tpu
  dest="${dest:-tpu_logs/${TPU_NAME}}"
  if [[ -n "$workers" && ! "$workers" =~ ^[1-9][0-9]*$ ]]; then
    usage_error "--workers must be a positive number, got '${workers}'."
  fi
  if [[ -z "$workers" ]]; then
    if is_dry_run; then
      tpu_vm describe "$TPU_NAME" --format='value(networkEndpoints.len())'
      echo "# (dry run: the worker count is not queried; assuming 1)"
      workers=1
    else
      workers="$(tpu_vm describe "$TPU_NAME" \
        --format='value(networkEndpoints.len())')"
      [[ "$workers" =~ ^[1-9][0-9]*$ ]] ||
        die "could not get the number of workers of ${TPU_NAME}."
    fi
  fi
  local pattern="${run_name:+${run_name}.}*" i
  for ((i = 0; i < workers; i++)); do
    run_cmd mkdir -p "${dest}/worker-${i}"
    tpu_vm scp "${TPU_NAME}:${REMOTE_LOGS}/${pattern}" "${dest}/worker-${i}/" \
      --worker="$i"
  done
  if ! is_dry_run; then
    echo "Logs of ${workers} worker(s) in ${dest}/."
  fi
}

# ---------------------------------------------------------------------------
# status

usage_status() {
  cat <<EOF
Usage: ${SCRIPT} status [OPTIONS]

Shows the queued request's state if the TPU VM was requested as one
(WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, ...), the TPU VM (state,
health, type) once it exists and, on every worker, each run
started with '${SCRIPT} run': running, or its exit status (0 finished,
75 preempted: run it again to resume).

Options:
  --name, --zone, --project, --dry-run   as for every command
EOF
}

cmd_status() {
  while (($#)); do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    case "$1" in
      -h | --help) usage_status; exit 0 ;;
      *) usage_error "unknown option '$1'." ;;
    esac
  done
  require_tpu
  if has_queued_resource; then
    queued describe "$TPU_NAME" --format='table(name.basename(),state.state)'
  fi
  if ! tpu_vm describe "$TPU_NAME" \
    --format='table(name.basename(),acceleratorType,state,health)'; then
    echo "${SCRIPT} status: no TPU VM '${TPU_NAME}' yet." >&2
    return 0
  fi
  local remote
  # shellcheck disable=SC2016  # Expands on the workers.
  remote='cd "$HOME"/'"$REMOTE_LOGS"' 2>/dev/null || { echo "$(hostname): no runs"; exit 0; }
for pid_file in *.pid; do
  [ -e "$pid_file" ] || continue
  run=${pid_file%.pid}
  if [ -f "$run.exit" ]; then
    state="exited with $(cat "$run.exit")"
    case "$(cat "$run.exit")" in
      0) state="$state (finished)" ;;
      75) state="$state (preempted: run it again to resume)" ;;
    esac
  elif kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    state=running
  else
    state="killed (no exit status)"
  fi
  echo "$(hostname) $run: $state"
done'
  tpu_vm ssh "$TPU_NAME" --worker=all --command="$remote" ||
    echo "${SCRIPT} status: could not reach the workers (is the TPU READY?)." >&2
}

# ---------------------------------------------------------------------------
# delete

usage_delete() {
  cat <<EOF
Usage: ${SCRIPT} delete [OPTIONS]

Deletes the TPU VM, and its queued resource if it was requested as one
(gcloud compute tpus queued-resources delete NAME --force); gcloud asks
for confirmation unless --yes. The workdirs and data on GCS stay.

Options:
  --yes             do not ask
  --name, --zone, --project, --dry-run   as for every command
EOF
}

cmd_delete() {
  local yes=""
  while (($#)); do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    NSHIFT=1
    case "$1" in
      -h | --help) usage_delete; exit 0 ;;
      --yes | -y | --quiet) yes=1 ;;
      *) usage_error "unknown option '$1'." ;;
    esac
    shift "$NSHIFT"
  done
  require_tpu
  local args=(delete "$TPU_NAME")
  if [[ -n "$yes" ]]; then args+=(--quiet); fi
  if has_queued_resource; then
    queued "${args[@]}" --force
  else
    tpu_vm "${args[@]}"
  fi
}

# ---------------------------------------------------------------------------

COMMAND=""
main() {
  # Options before the command: the common ones and --help.
  while (($#)) && [[ "$1" == -* ]]; do
    if common_option "$@"; then shift "$NSHIFT"; continue; fi
    case "$1" in
      -h | --help) usage_main; exit 0 ;;
      *) usage_error "unknown option '$1' (options go after the command)." ;;
    esac
  done
  if (($# == 0)); then
    usage_main >&2
    exit 2
  fi
  COMMAND="$1"
  shift
  case "$COMMAND" in
    help)
      if (($#)); then
        COMMAND="$1"
        main "$1" --help
      fi
      usage_main
      ;;
    create) cmd_create "$@" ;;
    install) cmd_install "$@" ;;
    run) cmd_run "$@" ;;
    logs) cmd_logs "$@" ;;
    status) cmd_status "$@" ;;
    delete) cmd_delete "$@" ;;
    *)
      local unknown="$COMMAND"
      COMMAND=""
      usage_error "unknown command '${unknown}'; one of: create, install," \
        "run, logs, status, delete, help."
      ;;
  esac
}

main "$@"
