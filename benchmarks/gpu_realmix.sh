#!/usr/bin/env bash
# The realmix GPU rows in one device call. Prepare here with `python benchmarks/gpu_kit.py`,
# then call the device's `run` with carry [".carry"] (and, to continue a run cut by the call's
# limit, "runs/realmix/<key>" brought back from an earlier call) and the command
#     bash benchmarks/gpu_realmix.sh rlr crad
# Rows: rlr (50 epochs, batch 16), rlr-ref (the same with reference attention), crad (its
# preset), uniad (its preset). Sequential, so each row's wall time is its own. What comes back
# under $OUT: realmix.md, realmix.json, the heatmap montages and log.txt; copy the first three
# kinds into benchmarks/. A row whose run folder exists continues it with --resume.
# DEVICE and EXTRA (appended arguments, e.g. "--epochs 1") are for a smoke test off the GPU.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
if ! python3 -c "import pydantic" 2>/dev/null; then  # the device image lacks it
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .carry/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
ln -sfn .carry/realmix DATA  # the reports name the data root DATA, as the earlier GPU rows
start=$(mktemp)
note="ball_screw and magnetic_tile travelled to the GPU machine as 256-px JPEG copies"
note+=" (quality 97, no chroma subsampling; benchmarks/gpu_kit.py), glass and pcb as their files;"
note+=" backbone weights: the wheel's, cut to the stages that levels 0-3 run"
status=0
for row in "$@"; do
    case "$row" in
        rlr) args=(--epochs 50 --batch-size 16); key=rlr-e50-b16 ;;
        rlr-ref) args=(--epochs 50 --batch-size 16 --attention reference); key=rlr-e50-b16-ref ;;
        crad) args=(--method crad); key=crad-e50-b64 ;;
        uniad) args=(--method uniad); key="" ;;
        *) echo "unknown row $row (rlr, rlr-ref, crad, uniad)"; exit 2 ;;
    esac
    resume=()
    [ -n "$key" ] && [ -f "runs/realmix/$key/config.json" ] && resume=(--resume)
    echo "== $row ${args[*]} ${resume[*]}"
    # shellcheck disable=SC2086  # EXTRA is a list of words
    python3 benchmarks/realmix.py --root DATA --device "${DEVICE:-cuda}" "${args[@]}" \
        "${resume[@]}" --weights .carry/lite2-levels-0-3.safetensors --data-note "$note" \
        ${EXTRA:-} || status=$?
done
cp benchmarks/realmix.md benchmarks/realmix.json "$OUT"/
for png in benchmarks/realmix_heatmaps_*.png; do  # the montages this call wrote
    [ "$png" -nt "$start" ] && cp "$png" "$OUT"/
done
exit $status
