#!/usr/bin/env bash
# The GPU measurement of meta-training speed, in one call of a lent device machine (its image holds torch,
# transformers, peft and accelerate; the rest travels in outputs/gpu_bundle, built here by gpu_bundle.py):
#
#   device run, carry ["outputs/gpu_bundle"], timeout_s 540:  bash benchmarks/speed/gpu_check.sh
#
# It meta-trains the intent recipe's configuration (meta_step_speed.py: MiniLM, LoRA in the top 3 layers, 4 episodes
# per meta-step) for META_STEPS meta-steps in float32 and under bf16, and writes meta-steps/s, peak GPU memory and
# the paired validation accuracy to $OUT/meta_step_speed_gpu.json (and the log to $OUT/log). On a machine without a
# GPU (OUT and META_STEPS set by hand) it runs the same path on the CPU, which is how it is tested.
set -euo pipefail
OUT=${OUT:?set OUT to a folder for the results}
BUNDLE=${BUNDLE:-outputs/gpu_bundle}
META_STEPS=${META_STEPS:-200}
[ -d "$BUNDLE/model" ] || { echo "no $BUNDLE: run 'python benchmarks/speed/gpu_bundle.py' and carry it" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT  # the float32 model and the runs of meta_step_speed.py
if ! python3 -c "import datasets, evaluate" 2>/dev/null; then  # the device image lacks them; a dev machine has them
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$BUNDLE"/wheels/*.whl
fi
export PYTHONPATH="$WORK/site:$PWD" HF_HUB_OFFLINE=1 HF_META_DATA_DIR="$BUNDLE/data" PYTHONUNBUFFERED=1
python3 benchmarks/speed/gpu_bundle.py --restore "$BUNDLE/model" "$WORK/minilm"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__)"
  python3 benchmarks/speed/meta_step_speed.py --model "$WORK/minilm" --meta_steps "$META_STEPS" \
      --arms "batched, Newton" "batched, Newton, bf16" --head_fit_episodes 0 --work_dir "$WORK/runs" \
      --output "$OUT/meta_step_speed_gpu.json"
} 2>&1 | tee "$OUT/log"
