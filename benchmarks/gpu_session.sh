#!/usr/bin/env bash
# The GPU work of issue 5 in as few device calls as possible (each call: 10 min at most).
#
#   bash benchmarks/gpu_session.sh check   # the kernel tests on CUDA (compiled Triton) and the trainers
#                                          #   end to end there (tests/train/test_cuda_training.py), ~1 min
#   bash benchmarks/gpu_session.sh goals   # issue 5's goal shape (D=4096 V=128256 N=16384): every method,
#                                          #   trainable and frozen, the verdict (goals_verdict.py, into
#                                          #   goals.txt: each goal met or not, what it decides), then
#                                          #   profile_logprobs.py, ~4 min
#   bash benchmarks/gpu_session.sh table   # bench_logprobs.py --gpu: 2 heads x 2 token counts x 8 methods
#                                          #   (torch.compile and Liger compile per shape: several minutes);
#                                          #   table-llama / table-smol: one head each (4096x128256 / 576x49152)
#   bash benchmarks/gpu_session.sh frozen  # the frozen-head (LoRA) row at D=4096 V=128256 N=16384
#   bash benchmarks/gpu_session.sh sweep   # Triton order/splits/tiles/warps/budget at D=4096 V=128256 N=16384
#   bash benchmarks/gpu_session.sh slabs   # the one-pass loss at the goal shape without vocabulary slabs, with 2 row splits
#   bash benchmarks/gpu_session.sh stages  # the one-pass loss at the goal shape, each its own run: the defaults,
#                                          #   the fused slab softmax (_slabs.FUSED_PARTS), 4 slabs, 384-token blocks,
#                                          #   16 logsumexp splits (one 4096 tile each at 3 slabs' 42752 columns),
#                                          #   4 (3 tiles each), 8192- and 2048-column logsumexp tiles (_row_lse ran
#                                          #   at 2.2 TB/s on 2026-12-04: a block's few short programs)
#   bash benchmarks/gpu_session.sh onepass # the one-pass DPO loss against triton/liger (chunked when frozen),
#                                          #   answers of 64 and 256 tokens (pairs of 128 and 512: a block, a stage)
# Steps run in the order given, each timed; keep each call under the device tool's 10 minutes. With
# 15 minutes of device time a session (a start costs about 40 s), "check goals" first (on an H200
# the check and the goal tables took about 4 minutes on 2026-11-30), then "table-smol", "onepass".
#
# Meant for the `device` tool's machine: its python3 already has torch and triton; the baselines
# (liger-kernel, cut-cross-entropy) have no network there, so carry their wheels:
#   pip download --no-deps -d .wheels liger-kernel cut-cross-entropy   # here; .wheels is git-ignored
#   run(command="bash benchmarks/gpu_session.sh check frozen table-smol", carry=[".wheels"])
# Everything printed is also written under $OUT (the device tool brings it back).
set -uo pipefail
OUT=${OUT:-/tmp/prefopt-gpu}
PY=${PY:-python3}
for step in "${@:-check}"; do
  case $step in check|goals|table|table-llama|table-smol|frozen|sweep|onepass|slabs|stages) ;;
    *) echo "unknown step $step (check, goals, table, table-llama, table-smol, frozen, sweep, onepass, slabs, stages)"; exit 2 ;;
  esac
done
if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "no CUDA GPU visible to $PY: this script is for a lent GPU machine (it also installs .wheels there)"
  exit 3
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u +%Y-%m-%d
  $PY -m prefopt.cli env 2>&1 || echo "prefopt env failed"
} | tee "$OUT/device.txt"
if compgen -G ".wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-deps --no-index .wheels/*.whl || echo "wheel install failed (baselines will say so)"
fi

bench() {  # bench NAME ARGS...: one bench_logprobs.py run, table to stdout and $OUT/NAME.txt, rows to NAME.json
  local name=$1
  shift
  $PY benchmarks/bench_logprobs.py --gpu --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.txt" || status=1
}

for step in "${@:-check}"; do
  echo "== step $step (started $(date -u +%H:%M:%S))" | tee -a "$OUT/steps.txt"
  SECONDS=0
  case $step in
    check)
      $PY -m pytest -q -p no:cacheprovider tests/kernels tests/train/test_cuda_training.py tests/model/test_generate.py \
        "tests/train/test_memory_estimate.py::test_the_estimate_against_cuda_allocations" \
        "tests/train/test_answer_estimate.py::test_the_estimate_against_cuda_allocations" \
        tests/tasks/test_compare_smoke.py::test_eval_on_a_gpu_by_default_gives_the_cpus_answers_in_float32 \
        tests/tasks/test_predict.py::test_answer_logprobs_on_cuda_match_the_cpus \
        tests/evaluate/test_commands_on_a_gpu.py \
        tests/test_environment.py::test_on_a_gpu_machine_the_gpus_and_the_triton_path_are_found -rs 2>&1 | tee "$OUT/tests.txt" | tail -20
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    goals)  # the goal shape, trainable and frozen, and where each of prefopt's methods spends its time
      bench goals --shapes 4096x128256 --tokens 16384
      bench goals_frozen --frozen-weight --shapes 4096x128256 --tokens 16384 \
        --methods chunked triton onepass liger cce cce-exact
      # appended to goals.txt: the device tool brings back 8 files, and "check goals" writes 8 without it
      $PY benchmarks/goals_verdict.py "$OUT/goals.json" "$OUT/goals_frozen.json" 2>&1 | tee -a "$OUT/goals.txt" \
        || status=1
      $PY benchmarks/profile_logprobs.py --methods triton chunked onepass --cpu-ops 2>&1 | tee "$OUT/profile.txt" \
        || status=1 ;;
    table)
      bench table ;;
    table-llama)
      bench table_llama --shapes 4096x128256 ;;
    table-smol)
      bench table_smol --shapes 576x49152 ;;
    frozen)
      bench table_frozen --frozen-weight --shapes 4096x128256 --tokens 16384 --methods chunked triton liger cce cce-exact ;;
    onepass)  # pairs of 128 and 512 scored tokens (one block, a whole stage); one file for the four tables
      for seq in 64 256; do
        for weight in "" --frozen-weight; do
          $PY benchmarks/bench_logprobs.py --gpu --shapes 4096x128256 --tokens 16384 --seq-len "$seq" --reps 3 \
            $weight --methods onepass triton $([ -n "$weight" ] && echo chunked || echo liger) 2>&1 \
            | tee -a "$OUT/onepass.txt" || status=1
        done
      done ;;
    slabs)  # the one-pass loss at the goal shape without its vocabulary slabs (128-token blocks), and with 2 row splits
      for opts in "--slab-rows 0" "--row-splits 2"; do
        $PY benchmarks/bench_logprobs.py --gpu --methods onepass --shapes 4096x128256 --tokens 16384 $opts 2>&1 \
          | grep -E "^device|bare GEMMs|^\| onepass" | tee -a "$OUT/slabs.txt" || status=1
      done ;;
    stages)  # the one-pass loss's stage, slab and row-kernel options, each against the defaults of the same call
      for opts in "" --fused-slabs "--fused-slabs --budget 8388608" "--budget 8388608" \
                  "--slab-rows 384 --budget 14000000" "--fused-slabs --slab-rows 384 --budget 14000000" \
                  "--row-splits 16" "--row-splits 4" '--row-blocks {"lse":8192}' '--row-blocks {"lse":2048}'; do
        $PY benchmarks/bench_logprobs.py --gpu --methods onepass --shapes 4096x128256 --tokens 16384 $opts 2>&1 \
          | grep -E "^device|bare GEMMs|^\| onepass" | tee -a "$OUT/stages.txt" || status=1
      done ;;
    sweep)
      # tiles that compile to wgmma without spills on sm_90 (as tests/kernels/test_triton_compile.py checks),
      # the launch order and splits (the first: the defaults until 2026-11-30, then 16, 32 (the default now), 64)
      for cfg in '{"order": "rows", "splits": 3}' '{"splits": 16}' '{"splits": 32}' '{"splits": 64}' \
                 '{"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_D": 64, "num_warps": 8, "num_stages": 4}' \
                 '{"BLOCK_N": 64, "BLOCK_V": 256, "BLOCK_D": 64, "num_warps": 8}' \
                 '{"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_D": 64, "num_warps": 4}' \
                 '{"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_D": 32, "num_warps": 8}'; do
        for budget in 16777216 67108864; do
          echo "== blocks $cfg budget $budget"
          $PY benchmarks/bench_logprobs.py --gpu --methods triton --shapes 4096x128256 --tokens 16384 \
            --blocks "$cfg" --budget "$budget" --reps 3 2>&1 | tail -1 | tee -a "$OUT/sweep.txt"
        done
      done
      for budget in 16777216 67108864; do  # frozen head: token chunks, each reading the whole weight
        echo "== frozen budget $budget"
        $PY benchmarks/bench_logprobs.py --gpu --methods triton --shapes 4096x128256 --tokens 16384 --frozen-weight \
          --budget "$budget" --reps 3 2>&1 | tail -1 | tee -a "$OUT/sweep.txt"
      done ;;
  esac
  echo "== step $step took ${SECONDS}s" | tee -a "$OUT/steps.txt"
done
exit $status
