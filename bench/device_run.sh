#!/usr/bin/env bash
# The GPU device run (issue 12, item 4): one command, on the lent GPU machine, that
# installs the carried wheels, builds the real-size random-weight models in memory
# (Parakeet-TDT-0.6B-like, Sortformer 4spk-v1, TitaNet-large) and runs bench/gpu.py's
# Ray-free sections: RTFx per model at batch 1, 8 and 32, peak GPU memory per model
# against serve_config.yaml's shares, bf16 (and fp16) against fp32, and the one-hour
# pipeline walk. The log and gpu.json land in $OUT, which the device tool brings back.
#
# Here, first (once): scripts/device_wheels.sh   # .whl/, ~48 MiB, git-ignored
# Then the device tool's run, as written out in bench/RESULTS.md ("On a GPU"):
#   command: PYTHONUNBUFFERED=1 bash bench/device_run.sh   carry: [".whl"]   timeout_s: 360
#
# The same path at small size on CPU (the proof when no GPU is lent):
#   PY=/path/to/python WHL=/tmp/whl311 SITE=/tmp/site311 OUT=/tmp/out bash bench/device_run.sh --small
#
# Environment: PY (python3), WHL (.whl), SITE (/tmp/site), OUT (a new temporary folder),
# BUDGET_S (gpu.py's soft wall-clock budget, 240), HARD_S (hard limit on gpu.py, 300).
# Extra arguments go to bench/gpu.py after the defaults (the last of a repeated one wins).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-python3}
WHL=${WHL:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-$(mktemp -d)}
BUDGET_S=${BUDGET_S:-240}
HARD_S=${HARD_S:-300}
mkdir -p "$OUT"
t0=$(date +%s)

# 1. The carried wheels, as the device README says (no registry there).
ls "$WHL"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHL: run scripts/device_wheels.sh" >&2; exit 1; }
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$WHL"/*.whl || exit 1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
echo "# wheels: $(ls "$WHL"/*.whl | wc -l) installed into $SITE in $(($(date +%s) - t0)) s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import importlib.util as u, sys; print("# python", sys.version.split()[0], "| ray importable:", u.find_spec("ray") is not None)'

# 2. The benchmark: real size on the GPU, tiny on CPU with --small.
if [[ " $* " == *" --small "* ]]; then
  defaults=(--in-memory --sections models,precision,pipeline --reps 2 --batches 1,2,4)
else
  defaults=(--in-memory --models real --device cuda --sections models,precision,pipeline
    --batches 1,8,32 --reps 2 --recording-s 3600 --asr-window-batch 16 --precisions bf16,fp16)
fi
timeout -k 10 "$HARD_S" $PY bench/gpu.py "${defaults[@]}" --budget-s "$BUDGET_S" \
  --json "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
rc=${PIPESTATUS[0]}
echo "# device run: bench/gpu.py exited $rc; $(($(date +%s) - t0)) s in all; files in $OUT"
exit "$rc"
