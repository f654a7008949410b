#!/usr/bin/env bash
# One session on a lent GPU (the device tool: 15 minutes in all, at most 10 per command):
# benchmark `lens run` (up to 3 minutes, alone on the GPU), then carry the default model's
# training run on by TRAIN_S seconds (default 360) while the GPU tests run. TRAIN_ONLY=1 skips
# the benchmark and the tests once a session has recorded them (then TRAIN_S up to ~540).
# The run is one long run split over sessions (a 4.5-minute run from scratch never left the
# mean lens, MODEL_CARD.md): each session resumes it from CHAIN_DIR and hands the stages it
# changed back through OUT_DIR.
#   tools/gpu_session.sh OUT_DIR [CHAIN_DIR [TRAIN_S]]
# CHAIN_DIR (default runs/chain, git-ignored) stays on this machine; a call carries (the device
# tool's `carry`, 64 MiB a call with the ~31 MB of tracked files) only the stage in progress,
# its folder (last.pt with weights and Adam moments, best.pt, history.jsonl: ~30 MB for
# "small"), with FROM_STAGE naming it; a stage's first call carries its parent's best.pt
# instead (a resumed stage needs only its own folder). Earlier stages are finished and stay
# here. The first call starts the run, so it carries nvImageCodec's wheels (`.whl`, 28 MB) for
# the benchmark's GPU codec rows and the GPU tests instead (and simplejpeg, a base dependency
# the device's Python lacks). `.whl` is git-ignored, so a fresh
# checkout has none; make it first (the device's Python is 3.12; checked 2026-11-27):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg simplejpeg
# Then (the benches alone: tools/bench_gpu.py, tools/bench_gpu_check.py and
# tools/bench_gpu_batch.py, with PYTHONPATH=/tmp/site:$PWD):
#   run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
#       --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site &&
#       tools/gpu_session.sh $OUT runs/chain", carry=[".whl"], timeout_s=590)
# Later calls, e.g. mid-param, and unpacking what came back:
#   run(command="TRAIN_ONLY=1 tools/gpu_session.sh $OUT runs/chain 540",
#       carry=["runs/chain/param"], timeout_s=590)
#   mkdir -p runs/chain && cat FILES_AT/chain.tar.part* | tar -xf - -C runs/chain
# and hybrid's first call: command="TRAIN_ONLY=1 FROM_STAGE=hybrid tools/gpu_session.sh $OUT
# runs/chain 540", carry=["runs/chain/param/best.pt"]. TRAIN_S includes rendering the data.
# Model, data and stage budgets: the environment of tools/train_default.sh (BACKBONE, BATCH,
# POOL, ...) and M1 M2 M3, each stage's total minutes over all sessions (default 60 6 4).
# DEVICE=cpu runs the training part on a CPU (to try the script). Needs torch with CUDA,
# torchvision, and nvImageCodec for the GPU codec rows of the benchmark.
set -uo pipefail
OUT=${1:?out dir}; CHAIN=${2:-runs/chain}; TRAIN_S=${3:-360}
export PYTHONUNBUFFERED=1
# the repository on the path: the tools/ scripts import lens, which the device's Python does not
# have installed (PYTHONPATH=/tmp/site alone left bench_gpu.py with "No module named 'lens'")
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$OUT" "$CHAIN"
log=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
started=$(mktemp)  # what is newer than this, this session changed
if [ -z "${TRAIN_ONLY:-}" ]; then  # the benchmark first, alone on the GPU
  timeout 180 python3 tools/bench_gpu.py 64 24 14 > "$OUT/bench.txt" 2>&1
  echo "bench rc=$?" >> "$log"
fi
# SIGTERM at the end of TRAIN_S: lens train finishes its step, saves last.pt and stops; the
# next session's same command resumes it (tools/train_default.sh)
( BATCH=${BATCH:-128} WORKERS=${WORKERS:-8} POOL=${POOL:-3000} STAGE_POOL=${STAGE_POOL:-1000} \
  timeout -s TERM "$TRAIN_S" tools/train_default.sh "$CHAIN" "${DEVICE:-cuda}" "${M1:-60}" "${M2:-6}" "${M3:-4}" > "$OUT/train.txt" 2>&1
  echo "train rc=$? (124: stopped at the session's end, resumable)" >> "$log" ) &
if [ -z "${TRAIN_ONLY:-}" ]; then  # correctness, beside the training
  timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_run.py >> "$log" 2>&1
  echo "gpu tests rc=$?" >> "$log"
fi
wait
# Back through $OUT (at most 8 files of 16 MiB): the stages this session changed, as one tar in
# 15 MB parts (last.pt alone is ~22 MB)
changed=$(for s in param hybrid finetune; do
  [ -n "$(find "$CHAIN/$s" -newer "$started" -type f 2>/dev/null | head -1)" ] && echo "$s"; done)
if [ -n "$changed" ]; then
  tar -cf - -C "$CHAIN" $changed | split -b 15M -d - "$OUT/chain.tar.part"
  echo "stages back: $changed" >> "$log"
fi
for s in param hybrid finetune; do
  [ -f "$CHAIN/$s/history.jsonl" ] && { echo "== $s"; cat "$CHAIN/$s/history.jsonl"; } >> "$OUT/history.txt"
done
rm -f "$started"
