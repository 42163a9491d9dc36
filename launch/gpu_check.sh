#!/usr/bin/env bash
# The project's checks on one GPU host, in about 10 minutes: the bench
# (float32 and bfloat16), the quick run end to end and the tests that mean
# something on a GPU. Every part has its own time limit, so a slow or
# failing one leaves the others' results.
#
#   bash launch/gpu_check.sh [OUT_DIR]      # default: $OUT or ./gpu_check
#
# Writes OUT_DIR/bench_gpu_<kind>.json (the float32 and bfloat16 benches
# merged: copy it to docs/), the benches' readable tables, the quick run's
# log and table, and the tests' log. Needs JAX for the GPU (pip install
# "jax[cuda12]"); the quick run needs Fashion-MNIST (TFDS_DATA_DIR, or
# Debian's dataset-fashion-mnist).
set -uo pipefail

out="${1:-${OUT:-./gpu_check}}"
mkdir -p "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$out/gpu_check.log"; }

backend=$(python -c 'import jax; print(jax.default_backend())' 2>/dev/null)
if [[ "$backend" != gpu ]]; then
  log "JAX's backend is '${backend:-none}', not gpu: install jax[cuda12]."
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee "$out/nvidia_smi.csv"
kind=$(python -c 'import jax; print(jax.devices()[0].device_kind.lower().replace(" ", "_"))')

# The step, FLOP rate, pruning and seeds at GPU batch sizes, float32.
log "bench float32"
timeout 240 python -m sslprune_jax.bench --models=resnet18,resnet50 \
  --sections=step,flops,prune,seeds --cifar_batch_size=1024 \
  --imagenet_batch_size=256 --seeds=1,2,4 --dtype=float32 \
  --json_out="$out/bench_float32.json" >/dev/null 2>"$out/bench_float32.txt"
log "bench float32: exit $?"

# ResNet-50 in bfloat16, the target (>= 3,000 img/s on an H100/H200).
log "bench bfloat16"
timeout 150 python -m sslprune_jax.bench --models=resnet50,resnet18 \
  --sections=step,flops --cifar_batch_size=1024 --imagenet_batch_size=256 \
  --dtype=bfloat16 --json_out="$out/bench_bfloat16.json" \
  >/dev/null 2>"$out/bench_bfloat16.txt"
log "bench bfloat16: exit $?"

python - "$out" "$kind" <<'EOF'
import json, pathlib, sys
out, kind = pathlib.Path(sys.argv[1]), sys.argv[2]
merged = {}
for dtype in ('float32', 'bfloat16'):
  path = out / f'bench_{dtype}.json'
  if path.exists():
    merged[dtype] = json.loads(path.read_text())
(out / f'bench_gpu_{kind}.json').write_text(json.dumps(merged, indent=1))
print(f'wrote {out}/bench_gpu_{kind}.json ({", ".join(merged) or "empty"})')
EOF

# The quick run, end to end (without Fashion-MNIST its log says how to
# get it).
log "quick run"
start=$(date +%s)
timeout 180 python -m sslprune_jax.main --config=configs/labels.py:quick \
  --workdir="$out/quick" >"$out/quick.log" 2>&1
log "quick run: exit $?, $(( $(date +%s) - start )) s"
cp "$out/quick/results.csv" "$out/quick_results.csv" 2>/dev/null

# The tests that exercise the device: steps, pruning, seeds, kernels' choice.
log "tests"
timeout 120 python -m pytest -q -x tests/test_train.py tests/test_pruning.py \
  tests/test_models.py >"$out/tests.log" 2>&1
log "tests: exit $? ($(tail -1 "$out/tests.log"))"
