#!/usr/bin/env bash
# Runs every benchmark on the accelerator (or on the CPU with DEVICE=cpu) and prints the
# tables; JSON results go to $OUT (default bench_results/). A few minutes with --quick.
#   bash scripts/run_gpu_bench.sh            # GPU, quick sizes
#   MODE=full bash scripts/run_gpu_bench.sh  # GPU, the sizes of docs/performance.md
#   PYTHON=/tmp/benchvenv/bin/python         # an interpreter that also has torch/torchopt
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-gpu}"
MODE="${MODE:-quick}"
OUT="${OUT:-${TMPDIR:-/tmp}/structsel_bench}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
flag=()
[ "$MODE" = "quick" ] && flag=(--quick)
[ "$MODE" = "tiny" ] && flag=(--tiny)

"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices('$DEVICE'))"
for name in hypergradient memory search enumeration; do
  echo "=== bench_$name ($DEVICE, $MODE) ==="
  "$PYTHON" "scripts/bench_$name.py" "${flag[@]}" --device "$DEVICE" --out "$OUT/$name.json"
done
if "$PYTHON" -c "import torch, torchopt" 2>/dev/null; then
  echo "=== bench_torch ($DEVICE, $MODE) ==="
  "$PYTHON" -W ignore "scripts/bench_torch.py" "${flag[@]}" --device "$DEVICE" --out "$OUT/torch.json"
else
  echo "=== bench_torch skipped: torch/torchopt not importable by $PYTHON ==="
fi
