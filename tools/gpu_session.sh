#!/usr/bin/env bash
# One session on a lent GPU (the device tool, 15 minutes in all): benchmark `lens run`, run the
# GPU tests, and train two default-model candidates side by side ("small" at 240 px and
# "small-hr" at 480 px); the candidates' checkpoints and curves land in OUT_DIR.
#   tools/gpu_session.sh OUT_DIR [MINUTES_PARAM MINUTES_HYBRID MINUTES_FINETUNE]
# Needs torch with CUDA, torchvision, and nvImageCodec for the GPU codec rows.
set -uo pipefail
OUT=${1:?out dir}; M1=${2:-4}; M2=${3:-0.6}; M3=${4:-0.4}
export PYTHONUNBUFFERED=1
log=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
timeout 180 python3 tools/bench_gpu.py 64 24 14 > "$OUT/bench.txt" 2>&1
echo "bench rc=$?" >> "$log"
( BATCH=128 WORKERS=6 POOL=3000 STAGE_POOL=1000 tools/train_default.sh /tmp/runA cuda "$M1" "$M2" "$M3" > "$OUT/trainA.txt" 2>&1 ) &
( BACKBONE=small-hr INPUT_WIDTH=480 SOURCE_WIDTH=1280 BATCH=128 WORKERS=8 POOL=2000 STAGE_POOL=600 \
  tools/train_default.sh /tmp/runB cuda "$M1" "$M2" "$M3" > "$OUT/trainB.txt" 2>&1 ) &
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_run.py >> "$log" 2>&1
echo "gpu tests rc=$?" >> "$log"
wait
for r in A B; do
  for s in finetune hybrid param; do  # the latest stage that finished
    if [ -f "/tmp/run$r/$s/best.pt" ]; then cp "/tmp/run$r/$s/best.pt" "$OUT/ckpt$r.pt"; echo "run $r: $s" >> "$log"; break; fi
  done
  for s in param hybrid finetune; do echo "== $r $s" >> "$OUT/history.txt"; cat "/tmp/run$r/$s/history.jsonl" >> "$OUT/history.txt" 2>/dev/null; done
done
