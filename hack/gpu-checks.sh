#!/usr/bin/env bash
# The GPU checks, as one command for a CUDA machine lent for a few minutes (CI has no GPU):
#   1. tests/gpu (bf16 transformer through the real worker entry point, with MFU; the
#      trainer's process group on CUDA is NCCL and its all-reduce is exact);
#   2. bench/gpu_transformer.py: bf16 GEMM ceiling, then the torchyard worker beside the plain
#      PyTorch loop, eager (ABBA) and torch.compile, tokens/s and MFU.
# It runs with the machine's own python3/torch; packages missing there come from wheels in
# $WHEELS (pydantic and its three small dependencies: the trainer reads the job spec with it).
# Every step has its own timeout and leaves its log and JSON under $OUT, so a run cut short
# still returns what it measured.
#
#   OUT=/tmp/gpu-out WHEELS=.whl bash hack/gpu-checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/torchyard-gpu-checks}
mkdir -p "$OUT"
if [[ -n "${WHEELS:-}" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/torchyard-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/torchyard-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/operator:$PWD/trainer_image:$PYTHONPATH PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.nccl.version())'
  nproc
} 2>&1 | tee "$OUT/env.txt"

timeout "${TESTS_TIMEOUT:-90}" python3 -m pytest -q -p no:cacheprovider -rA tests/gpu 2>&1 \
  | tee "$OUT/gpu_tests.log"
echo "tests/gpu rc=${PIPESTATUS[0]}"

timeout "${EAGER_TIMEOUT:-300}" python3 bench/gpu_transformer.py --modes eager --rounds 2 \
  >"$OUT/gpu_transformer_eager.json" 2>"$OUT/gpu_transformer_eager.log"
echo "eager rc=$?"; tail -3 "$OUT/gpu_transformer_eager.log"
cp bench/results/gpu_transformer.json "$OUT/gpu_transformer_eager_result.json" 2>/dev/null

timeout "${COMPILE_TIMEOUT:-260}" python3 bench/gpu_transformer.py --modes compile \
  >"$OUT/gpu_transformer_compile.json" 2>"$OUT/gpu_transformer_compile.log"
echo "compile rc=$?"; tail -3 "$OUT/gpu_transformer_compile.log"
cp bench/results/gpu_transformer.json "$OUT/gpu_transformer_compile_result.json" 2>/dev/null
grep -h "^\[\[" "$OUT"/gpu_transformer_*.log
