#!/usr/bin/env bash
# The exact commands that trained the shipped default model (MODEL_CARD.md).
#   tools/train_default.sh RUN_DIR DEVICE [MINUTES_PARAM MINUTES_HYBRID MINUTES_FINETUNE]
# On a GPU: tools/train_default.sh runs/default cuda 4 1 0.75
set -euo pipefail
RUN=${1:?run dir}; DEVICE=${2:-cpu}
M1=${3:-0}; M2=${4:-0}; M3=${5:-0}
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
common=(--run "$RUN" --device "$DEVICE" --workers "$WORKERS" --pool-size 3000 --batch 128 --val-size 256 --val-every 500 --steps 1000000 --seed 0)
python -m lens train --stage param    "${common[@]}" --minutes "$M1" --lr 1e-3
python -m lens train --stage hybrid   "${common[@]}" --minutes "$M2" --lr 3e-4
python -m lens train --stage finetune "${common[@]}" --minutes "$M3" --lr 1e-4
