#!/usr/bin/env bash
# Several GPUs of one machine, through the kit's CLI as users launch it (bench/check_data_parallel.py):
#   setup     unpack the GPU bundle (.gpu/site.tgz, .gpu/tok.tgz, wheels in .whl and .gpu/ds) into /tmp/gpu
#   fsdp      Llama-3.1-8B shape, hf backend: 1 GPU vs 2 with config/accelerate/fsdp_qlora.yaml
#   deepspeed the same with config/accelerate/deepspeed_zero3.yaml (reuses fsdp's 1-GPU row)
#   full      Llama-3.1-8B shape, hf backend: --mode full as the README writes it, on 1 GPU and under each
#             sharded config (FULL_CONFIGS, default "fsdp_qlora deepspeed_zero3 single"); eval, memory, samples to $OUT/full
#   resume    Llama-3.2-1B shape under fsdp_qlora.yaml: 16 steps straight, and 16 steps interrupted by Ctrl-C after
#             checkpoint 8 then --resume; the two adapters compared (resume.json)
#   packed    Llama-3.2-1B shape, packed rows: 1 vs 2 processes (torchrun) on PACKED_BACKENDS (default unsloth hf)
#   export    a tiny random model on unsloth: train, then export adapter, merged and gguf
# Usage: bash bench/gpu_multi.sh STAGE... ; results under $OUT (default outputs/gpu_multi)
set -uo pipefail
OUT=${OUT:-outputs/gpu_multi}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/gpu/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  PYTHONUNBUFFERED=1 MEDQLORA_CACHE=/tmp/mc
COMMON=(--set training.packing=false --set training.gradient_checkpointing=true --set training.micro_batch_size=4
        --set training.gradient_accumulation_steps=4 --set backend=hf)

model() {  # model SHAPE DIR
  [ -f "$2/config.json" ] || python3 -m medqlora.random_model --shape "$1" --out "$2" --device cuda \
    --tokenizer-from /tmp/gpu/tok > "$OUT/make_$1.log" 2>&1 || tail -20 "$OUT/make_$1.log"
}

for stage in "$@"; do
  t0=$SECONDS
  case $stage in
    setup)
      [ -d /tmp/gpu/site ] || { mkdir -p /tmp/gpu && tar xzf .gpu/site.tgz -C /tmp/gpu && tar xzf .gpu/tok.tgz -C /tmp/gpu &&
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu/site .whl/*.whl .gpu/ds/*.whl; }
      nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv" ;;
    fsdp)
      model llama-3.1-8b /tmp/l8
      python3 bench/check_data_parallel.py --model /tmp/l8 --gpus 2 --launcher fsdp --out "$OUT/fsdp" "${COMMON[@]}" ;;
    deepspeed)
      model llama-3.1-8b /tmp/l8
      python3 bench/check_data_parallel.py --model /tmp/l8 --gpus 2 --launcher deepspeed --out "$OUT/deepspeed" \
        --single-from "$OUT/fsdp/fsdp.json" "${COMMON[@]}" ;;
    full)
      model llama-3.1-8b /tmp/l8
      FULL=("${COMMON[@]}" --set model.name=/tmp/l8 --set training.max_steps=10 --set generation.max_new_tokens=24
            --set data.datasets.0.max_samples=96 --output-dir /tmp/full)
      for cfg in ${FULL_CONFIGS:-fsdp_qlora deepspeed_zero3 single}; do
        t1=$SECONDS
        if [ "$cfg" = single ]; then launch=(python3)
        else launch=(python3 -m accelerate.commands.launch --config_file config/accelerate/$cfg.yaml --num_processes 2); fi
        "${launch[@]}" medical_qlora_finetuning.py --mode full "${FULL[@]}" --set output.run_name=$cfg \
          > "$OUT/full_$cfg.log" 2>&1
        echo "full $cfg rc=$? in $((SECONDS - t1)) s"
        ls -la /tmp/full/$cfg/adapter 2>/dev/null | grep safetensors
        grep -hE "trainable parameters|eval (baseline|fine-tuned)|tokens/s|total time|  memory  |Error|\[process" "$OUT/full_$cfg.log" | tail -9
      done  # one archive: the device returns a limited number of files
      tar czf "$OUT/full_runs.tgz" -C /tmp/full --exclude adapter --exclude checkpoint-* --exclude tensorboard . ;;
    resume)
      model llama-3.2-1b /tmp/l1
      R=(python3 -m accelerate.commands.launch --config_file config/accelerate/fsdp_qlora.yaml --num_processes 2
         medical_qlora_finetuning.py --mode train --output-dir /tmp/res)
      S=("${COMMON[@]}" --set model.name=/tmp/l1 --set training.max_steps=16 --set training.save_steps=4
         --set training.auto_fit=false)
      "${R[@]}" "${S[@]}" --set output.run_name=straight > "$OUT/resume_straight.log" 2>&1; echo "straight rc=$?"
      set -m; "${R[@]}" "${S[@]}" --set output.run_name=cut > "$OUT/resume_cut.log" 2>&1 &  # own process group, as a terminal's job
      pid=$!
      until [ -f /tmp/res/cut/checkpoints/checkpoint-8/trainer_state.json ] || ! kill -0 $pid 2>/dev/null; do sleep 0.5; done
      sleep 1; kill -INT -- -$pid; wait $pid; echo "Ctrl-C rc=$?"; set +m; tail -3 "$OUT/resume_cut.log"
      "${R[@]}" --resume /tmp/res/cut > "$OUT/resume_resumed.log" 2>&1; echo "resumed rc=$?"
      grep -h "resum\|optimizer steps\|adapter saved" "$OUT/resume_resumed.log" | head -5
      python3 - "$OUT/resume.json" <<'PY'
import json, sys
from safetensors.torch import load_file
a, b = (load_file(f"/tmp/res/{n}/adapter/adapter_model.safetensors") for n in ("straight", "cut"))
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
runs = [json.load(open(f"/tmp/res/{n}/metrics.json")) for n in ("straight", "cut")]
loss = [{h["step"]: h["loss"] for h in r["log_history"] if "loss" in h} for r in runs]
out = {"same_keys": sorted(a) == sorted(b), "max_abs_difference": diff, "largest_weight": max(v.abs().max().item() for v in a.values()),
       "steps": [r["metrics"].get("steps") for r in runs], "loss_straight": loss[0], "loss_resumed": loss[1]}
print(out); json.dump(out, open(sys.argv[1], "w"), indent=2)
PY
      ;;
    packed)
      model llama-3.2-1b /tmp/l1
      for backend in ${PACKED_BACKENDS:-unsloth hf}; do
        python3 bench/check_data_parallel.py --model /tmp/l1 --gpus 2 --out "$OUT/packed_$backend" --set backend=$backend
      done ;;
    export)
      model tiny /tmp/tiny
      python3 medical_qlora_finetuning.py --mode train --set model.name=/tmp/tiny --set backend=unsloth \
        --set training.max_steps=4 --set data.datasets.0.max_samples=32 --set output.run_name=tiny \
        --output-dir /tmp/runs > "$OUT/export_train.log" 2>&1
      LLAMA_CPP_DIR=$PWD/.gpu/llama.cpp python3 medical_qlora_finetuning.py --mode export --adapter /tmp/runs/tiny \
        --set "export.formats=[${EXPORT_FORMATS:-adapter,merged,gguf}]" --output-dir /tmp/runs > "$OUT/export.log" 2>&1
      echo "export rc=$?"; grep -h "\[medqlora\]" "$OUT/export_train.log" "$OUT/export.log" | grep -v "^.medqlora.  *$" | tail -14 ;;
  esac
  echo "== $stage done in $((SECONDS - t0)) s"
done
