#!/usr/bin/env bash
# The GPU check: everything graph_mtl can only show on a GPU, in one run of a few minutes.
#
#   benchmarks/gpu_check.sh                      # on a CUDA machine: writes benchmarks/results/*_cuda.md
#   benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/check   # dry run of the same steps on a CPU (a test)
#
# Steps, each logged with its wall time:
#   1. the CUDA tests (tests/test_cuda.py: every balancer's update on CUDA against the CPU, AMP bf16 and fp16
#      steps, the batched per-task product against the loop, a short training run); skipped on a CPU;
#   2. the demo on the device (the embedded dataset, 30 epochs; --tiny: 1 epoch);
#   3. the step-time table (benchmarks/step_time.py) at T = 12 and 128 for every method in its default mode, rep
#      mode, exact mode (batched on CUDA) and the per-task loop, each also with an AMP bf16 forward (rows
#      labelled "amp bf16") (--tiny: T = 12, a small model, 2 steps);
#   4. training throughput of the engine against a plain loop on ogbg-moltox21, when the offline datasets are
#      at $GRAPH_MTL_SHARED_DATA (default ../shared/data); skipped with a line otherwise.
# The environment variable PY names the interpreter (default .venv/bin/python, else python).
set -euo pipefail

device=cuda
tiny=0
out=benchmarks/results
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --tiny) tiny=1; shift ;;
        --out) out="$2"; shift 2 ;;
        *) echo "gpu_check: unknown argument $1; use --device cuda|cpu, --tiny, --out DIR" >&2; exit 2 ;;
    esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, got $device" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
mkdir -p "$out"
runs="$out/gpu_check_runs"
log="$out/gpu_check_${device}.log"
: > "$log"

step() {  # step NAME COMMAND...: run it, log its wall time and exit code, keep going on failure
    local name="$1"; shift
    local started=$SECONDS
    echo "== $name: $*" | tee -a "$log"
    set +e
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    echo "== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$log"
    [ "$rc" -eq 0 ] || failed="$failed $name"
}
failed=""

$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')" | tee -a "$log"
if [ "$device" = cuda ]; then
    $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "gpu_check: --device cuda but CUDA is not available" | tee -a "$log"; exit 2; }
fi

step cuda-tests $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py

if [ "$tiny" -eq 1 ]; then epochs=1; else epochs=30; fi
step demo $PY -m graph_mtl.cli train --set device="$device" --set epochs="$epochs" --out "$runs/demo" --quiet

if [ "$tiny" -eq 1 ]; then
    step step-time $PY benchmarks/step_time.py --device "$device" --quick --steps 2 --methods pcgrad,upgrad \
        --modes default,rep,exact,loop --amp none,bf16 --out "$out/step_time_${device}.md"
else
    step step-time $PY benchmarks/step_time.py --device "$device" --tasks 12,128 --steps 10 --warmup 2 \
        --modes default,rep,exact,loop --amp none,bf16 --out "$out/step_time_${device}.md"
fi

data="${GRAPH_MTL_SHARED_DATA:-../shared/data}"
if [ -d "$data/ogbg_moltox21" ]; then
    if [ "$tiny" -eq 1 ]; then extra=(--max-steps 2 --repeats 1 --set model.hidden=32); else extra=(--repeats 3); fi
    step throughput $PY benchmarks/ogb_mol.py --throughput --data-dir "$data" --runs "$runs/throughput" \
        --set device="$device" "${extra[@]}" --out "$out/throughput_${device}.md"
else
    echo "== throughput: skipped, no $data/ogbg_moltox21 (set GRAPH_MTL_SHARED_DATA)" | tee -a "$log"
fi

if [ -n "$failed" ]; then
    echo "gpu_check: failed steps:$failed (see $log)" | tee -a "$log"
    exit 1
fi
echo "gpu_check: every step passed; tables in $out (log: $log)" | tee -a "$log"
