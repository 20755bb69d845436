#!/usr/bin/env bash
# Continue training the shipped model on a CUDA machine for a fixed time, then export it.
#
#   scripts/gpu_train.sh DURATION OUT_DIR [extra `symdiff train` options]
#   e.g. scripts/gpu_train.sh 10m /tmp/out --lr 5e-4
#
# Defaults from the measurements in docs/training.md (options given here win): lr 4e-4 with a
# cosine decay to 1e-5 over DURATION (1e-3 undid a trained model's progress), half of each
# batch's timesteps from the lowest tenth of noise levels, EMA 0.999.
#
# Writes OUT_DIR/model/ (release format: model.safetensors, config.json, README.md, and when
# INIT_MODEL samples with autoguidance its guide: guide*.safetensors, the same guide and weight),
# OUT_DIR/train_log.jsonl and OUT_DIR/train_stdout.log. The training checkpoint stays in
# OUT_DIR/run/ so the same command with the same OUT_DIR can be resumed by hand.
#
# Environment:
#   PYTHON        interpreter that has (or gets) the dependencies [python3 with torch, else make install]
#   INIT_MODEL    release model to start from [weights/qm9]
#   GUIDE_MODEL   releases (space-separated) whose networks, averaged, guide the export with
#                 INIT_MODEL's guidance weight, when INIT_MODEL has a guide [INIT_MODEL's own guide]
#   TRAIN_DATA    training data file (npz of positions/atomic_numbers/num_atoms), for machines
#                 without the qm9pack package; default: the QM9 train split
#   BATCH_SIZE    fixed batch size; default: the largest power of two that fits (capped at 2048)
#   WHEELS        folder of extra wheels to install first [ROOT/.whl if present]
set -euo pipefail
DURATION=${1:?usage: gpu_train.sh DURATION OUT_DIR [train options]}
OUT=${2:?usage: gpu_train.sh DURATION OUT_DIR [train options]}
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# 1. Python with the dependencies: an image's python3 that has torch, or our own venv.
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/.whl}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/symdiff-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/symdiff-site:${PYTHONPATH:-}
fi
if ! "$PY" -c "import torch, typer, rich, numpy, safetensors" 2>/dev/null; then
  make -C "$ROOT" install >/dev/null
  PY=$ROOT/.venv/bin/python
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1

INIT_MODEL=${INIT_MODEL:-$ROOT/weights/qm9}
DATA_ARGS=()
if [ -n "${TRAIN_DATA:-}" ]; then DATA_ARGS=(--data "$TRAIN_DATA"); fi

# 2. Batch size: the largest that fits on the GPU for the model being continued.
if [ -z "${BATCH_SIZE:-}" ]; then
  BATCH_SIZE=$("$PY" - "$INIT_MODEL" <<'PY'
import sys, torch
from symdiff_cli.engine.release import load_release_state_dict
from symdiff_cli.engine.device import resolve_device
from symdiff_cli.engine.batch_probe import largest_fitting_batch
cfg, _ = load_release_state_dict(sys.argv[1])
print(largest_fitting_batch(cfg, resolve_device("auto")))
PY
)
fi
echo "gpu_train: device $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'), batch $BATCH_SIZE, budget $DURATION" | tee "$OUT/train_stdout.log"

# 3. Train (resume if OUT_DIR already holds a run), 4. export the EMA weights.
RESUME=()
if [ -f "$OUT/run/checkpoint.pt" ]; then RESUME=(--resume); else RESUME=(--init-from "$INIT_MODEL"); fi
# A run that fails part-way (a diverged loss, a killed process) still has its last periodic
# checkpoint: export that, so GPU minutes already spent are not lost, and report the failure.
set +e
"$PY" -m symdiff_cli train --out "$OUT/run" "${RESUME[@]}" "${DATA_ARGS[@]}" --batch-size "$BATCH_SIZE" \
  --max-time "$DURATION" --checkpoint-every 2m --ema-decay 0.999 --warmup-steps 200 --log-every 50 --quiet \
  --lr 4e-4 --lr-schedule cosine --min-lr 1e-5 --low-noise-fraction 0.5 "$@" \
  2>&1 | tee -a "$OUT/train_stdout.log"
TRAIN_STATUS=${PIPESTATUS[0]}
set -e
if [ ! -f "$OUT/run/checkpoint.pt" ]; then
  echo "gpu_train: training failed before its first checkpoint (exit $TRAIN_STATUS)" | tee -a "$OUT/train_stdout.log"
  exit "$TRAIN_STATUS"
fi
# One export that samples the way INIT_MODEL does: with INIT_MODEL's guide networks and weight
# (or the releases of GUIDE_MODEL at that weight), so there is never an unguided one to mistake.
"$PY" - "$OUT/run/checkpoint.pt" "$OUT/model" "$INIT_MODEL" "${GUIDE_MODEL:-}" <<'PY' 2>&1 | tee -a "$OUT/train_stdout.log"
import sys
from symdiff_cli.engine.export import convert_checkpoint_to_release
from symdiff_cli.engine.guides import guide_from_releases, shipped_guide
from symdiff_cli.errors import SymdiffError
checkpoint, out, init, others = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
try:
    guide = shipped_guide(init)
    if guide is not None and others:
        guide = guide_from_releases(others, guide.weight)
    convert_checkpoint_to_release(checkpoint, out, guide=guide)
except SymdiffError as err:
    sys.exit(f"gpu_train: export failed: {err}")
print(f"gpu_train: exported the EMA weights of {checkpoint} to {out}"
      + (f", guided as {init} is: {len(guide.networks)} guide network(s), weight {guide.weight:g}" if guide else ""))
PY
cp "$OUT/run/metrics.jsonl" "$OUT/train_log.jsonl"
echo "gpu_train: exported $OUT/model (training exit $TRAIN_STATUS)" | tee -a "$OUT/train_stdout.log"
exit "$TRAIN_STATUS"
