#!/usr/bin/env bash
# A GPU machine's whole check in one call: the CUDA tests, whole sampling runs of the shipped
# model and where their time goes, then training it for the rest of the budget.
#
#   scripts/gpu_check.sh OUT_DIR [TRAIN_DURATION]        e.g. scripts/gpu_check.sh "$OUT" 5m
#
# Made for a bare GPU image that has torch, numpy, typer, rich, safetensors and pytest but neither
# RDKit nor the qm9pack package, and nothing to fetch them from: the tests
# (tests/test_accelerator.py) and the benchmark (benchmarks/device_sampling.py) import neither,
# and training reads QM9's training split from .gpu/qm9_train.npz.xz, which
# `python scripts/pack_qm9_train.py pack .gpu/qm9_train.npz.xz` writes here (about 9 MB; it must
# travel with the repository). Without TRAIN_DURATION, or without that file, nothing is trained.
#
# OUT_DIR receives eight files at most, none in sub-folders:
#   check.log                  every step's output, with the GPU's name and the time of each step
#   sampling.json              the benchmark's times (load, warm-up, each run)
#   molecules_N.npz            each run's molecules: `symdiff evaluate molecules_N.npz --dataset qm9`
#                              where RDKit is (the same molecules `symdiff generate --n N` writes there)
#   train_log.jsonl            the training run's metrics
#   model.safetensors, config.json   its EMA weights as a release; put the shipped guides beside them
#                              (cp weights/qm9/guide*.safetensors DIR/) to sample it as the shipped model is
#
# Environment:
#   PYTHON              interpreter with torch [python3]
#   SAMPLING_N          molecules per sampling run ["1000 10000"]
#   SAMPLING_PRECISION  auto, fp32 or bf16 [bf16]
#   SAMPLING_STEPS      denoising steps [the release's default on CUDA]
#   PROFILE_N           molecules of the sampling profile (benchmarks/sampling_profile.py) [1000]
#   TRAIN_ARCHIVE       the packed training data [ROOT/.gpu/qm9_train.npz.xz]
#   any of scripts/gpu_train.sh's (INIT_MODEL, BATCH_SIZE, ...)
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR [TRAIN_DURATION]}
TRAIN_DURATION=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT:${PYTHONPATH:-} PYTHONUNBUFFERED=1
LOG=$OUT/check.log
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
cd "$ROOT"

step "device"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY

step "CUDA tests (tests/test_accelerator.py)"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_accelerator.py 2>&1 | tee -a "$LOG"
TESTS_STATUS=${PIPESTATUS[0]}

step "sampling: n ${SAMPLING_N:-1000 10000}, ${SAMPLING_PRECISION:-bf16}, steps ${SAMPLING_STEPS:-the release default}"
STEPS_ARGS=()
if [ -n "${SAMPLING_STEPS:-}" ]; then STEPS_ARGS=(--steps "$SAMPLING_STEPS"); fi
# shellcheck disable=SC2086
"$PY" benchmarks/device_sampling.py --n ${SAMPLING_N:-1000 10000} --precision "${SAMPLING_PRECISION:-bf16}" \
  "${STEPS_ARGS[@]}" --out-dir "$OUT" 2>&1 | tee -a "$LOG"
SAMPLING_STATUS=${PIPESTATUS[0]}

# Where a GPU run's time goes by batch size, and whether padded batches of mixed atom counts
# (fewer, larger calls) would beat generate's one-count batches there: on 2 CPU cores they did not.
step "sampling profile: network calls by batch size, then the two batch layouts"
"$PY" benchmarks/sampling_profile.py calls --device auto --precision "${SAMPLING_PRECISION:-bf16}" \
  --n "${PROFILE_N:-1000}" "${STEPS_ARGS[@]}" 2>&1 | tee -a "$LOG"
PROFILE_STATUS=${PIPESTATUS[0]}
"$PY" benchmarks/sampling_profile.py layouts --device auto --precision "${SAMPLING_PRECISION:-bf16}" \
  --n "${PROFILE_N:-1000}" --rounds 1 "${STEPS_ARGS[@]}" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || PROFILE_STATUS=1

TRAIN_STATUS=skipped
PACKED=${TRAIN_ARCHIVE:-$ROOT/.gpu/qm9_train.npz.xz}
if [ -n "$TRAIN_DURATION" ] && [ -f "$PACKED" ]; then
  step "training for $TRAIN_DURATION (scripts/gpu_train.sh)"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # a fresh run: gpu_train.sh resumes a run it finds
  "$PY" scripts/pack_qm9_train.py unpack "$PACKED" "$WORK/train.npz" 2>&1 | tee -a "$LOG"
  TRAIN_DATA=$WORK/train.npz PYTHON=$PY "$ROOT/scripts/gpu_train.sh" "$TRAIN_DURATION" "$WORK/train" >>"$LOG" 2>&1
  TRAIN_STATUS=$?
  for f in "$WORK/train/train_log.jsonl" "$WORK/train/model/model.safetensors" "$WORK/train/model/config.json"; do
    if [ -f "$f" ]; then cp "$f" "$OUT/"; fi
  done
elif [ -n "$TRAIN_DURATION" ]; then
  step "no training: $PACKED is missing (scripts/pack_qm9_train.py pack writes it)"
fi

step "done: tests exit $TESTS_STATUS, sampling exit $SAMPLING_STATUS, profile exit $PROFILE_STATUS, training exit $TRAIN_STATUS"
[ "$TESTS_STATUS" = 0 ] && [ "$SAMPLING_STATUS" = 0 ] && { [ "$TRAIN_STATUS" = 0 ] || [ "$TRAIN_STATUS" = skipped ]; }
