#!/usr/bin/env bash
# The exact commands that trained the shipped default model (MODEL_CARD.md): three stages, each
# for a wall-clock budget in minutes.
#   tools/train_default.sh RUN_DIR DEVICE [MINUTES_PARAM MINUTES_HYBRID MINUTES_FINETUNE]
# Model and data through the environment (defaults in brackets): BACKBONE [small],
# INPUT_WIDTH [240], SOURCE_WIDTH [0: twice the input width], POOL [3000] sources for the
# param stage, STAGE_POOL [POOL] for the two later ones, BATCH [128], WORKERS [cores - 2],
# TRAIN_FLAGS [none] added to every stage (e.g. --cuda-graphs on a GPU), FROM_STAGE [param]
# the first stage to run (the earlier ones are finished, and need not be in RUN_DIR).
# On a GPU: BACKBONE=small-hr INPUT_WIDTH=480 SOURCE_WIDTH=1280 tools/train_default.sh runs/hr cuda 4 0.6 0.4
# Resumable: each stage resumes from RUN_DIR/<stage>/last.pt, a finished stage is skipped, and
# the minutes are each stage's total training time across calls. Ctrl-C or SIGTERM (`timeout`,
# a scheduler) make lens train finish its step, save and stop; the traps make this script wait
# for that instead of dying first. So a GPU lent for minutes at a time trains one run over
# several sessions: `timeout -s TERM SECONDS tools/train_default.sh RUN_DIR cuda 60 6 4` in each.
set -euo pipefail
trap 'exit 143' TERM
trap 'exit 130' INT
RUN=${1:?run dir}; DEVICE=${2:-cpu}
M1=${3:-0}; M2=${4:-0}; M3=${5:-0}
PY=${PYTHON:-python3}
POOL=${POOL:-3000}; STAGE_POOL=${STAGE_POOL:-$POOL}
WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}
common=(--run "$RUN" --device "$DEVICE" --workers "$WORKERS" --batch "${BATCH:-128}" --val-size 256 --val-every 250
        --steps 1000000 --seed 0 --source-width "${SOURCE_WIDTH:-0}" ${TRAIN_FLAGS:-})
case ${FROM_STAGE:-param} in param) first=1 ;; hybrid) first=2 ;; finetune) first=3 ;;
  *) echo "FROM_STAGE must be param, hybrid or finetune" >&2; exit 2 ;; esac
[ "$first" -le 1 ] && "$PY" -m lens train --stage param "${common[@]}" --pool-size "$POOL" --minutes "$M1" --lr 1e-3 \
      --backbone "${BACKBONE:-small}" --input-width "${INPUT_WIDTH:-240}"
[ "$first" -le 2 ] && "$PY" -m lens train --stage hybrid "${common[@]}" --pool-size "$STAGE_POOL" --minutes "$M2" --lr 3e-4
"$PY" -m lens train --stage finetune "${common[@]}" --pool-size "$STAGE_POOL" --minutes "$M3" --lr 1e-4
