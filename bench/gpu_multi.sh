#!/usr/bin/env bash
# Several GPUs of one machine, through the kit's CLI as users launch it (bench/check_data_parallel.py):
#   setup     unpack the GPU bundle (.gpu/site.tgz, .gpu/tok.tgz, wheels in .whl and .gpu/ds) into /tmp/gpu
#   fsdp      Llama-3.1-8B shape, hf backend: 1 GPU vs 2 with config/accelerate/fsdp_qlora.yaml
#   deepspeed the same with config/accelerate/deepspeed_zero3.yaml (reuses fsdp's 1-GPU row)
#   packed    Llama-3.2-1B shape, packed rows: 1 vs 2 processes (torchrun) on unsloth and on hf
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
    packed)
      model llama-3.2-1b /tmp/l1
      python3 bench/check_data_parallel.py --model /tmp/l1 --gpus 2 --out "$OUT/packed_unsloth"
      python3 bench/check_data_parallel.py --model /tmp/l1 --gpus 2 --out "$OUT/packed_hf" --set backend=hf ;;
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
