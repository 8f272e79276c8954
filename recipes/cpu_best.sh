#!/usr/bin/env bash
# The CPU workflow end to end: several recipes/cpu.py models, test-time augmentation, a blend fitted on
# validation only, and OUT_DIR/test_probs.csv for TEST_CSV (its label cells may be empty).
#
#   bash recipes/cpu_best.sh DATA_DIR TEST_CSV IMAGES_DIR OUT_DIR
#
# DATA_DIR holds train.csv, val.csv and images/. Every choice (models, TTA views, blend method) is made on
# DATA_DIR's validation rows; TEST_CSV's labels are never read. Finished models in OUT_DIR/runs are reused,
# so an interrupted workflow continues where it stopped. Settings (environment):
#   SEEDS        the models' seeds (default "42 7 2026": three models, about 6 min each on 2 quiet cores)
#   TTA          test-time views added to the identity (default rotate,zoom; empty: none)
#   FIT_OPTIONS  extra `keras-cxr fit` options for every model (e.g. "--epochs 2 --set swa.start_epoch=none")
#   KERAS_CXR    the command (default: keras-cxr; e.g. ".venv/bin/python -m keras_cxr")
set -euo pipefail

if [ "$#" -ne 4 ]; then
    echo "usage: bash recipes/cpu_best.sh DATA_DIR TEST_CSV IMAGES_DIR OUT_DIR" >&2
    exit 2
fi
DATA_DIR=$1 TEST_CSV=$2 IMAGES_DIR=$3 OUT_DIR=$4
SEEDS=${SEEDS:-"42 7 2026"}
TTA=${TTA-rotate,zoom}
KERAS_CXR=${KERAS_CXR:-keras-cxr}
RECIPE="$(cd "$(dirname "$0")" && pwd)/cpu.py"

for path in "$DATA_DIR/train.csv" "$DATA_DIR/val.csv" "$TEST_CSV"; do
    [ -f "$path" ] || { echo "cpu_best.sh: $path does not exist" >&2; exit 2; }
done
[ -d "$IMAGES_DIR" ] || { echo "cpu_best.sh: image folder $IMAGES_DIR does not exist" >&2; exit 2; }
mkdir -p "$OUT_DIR/runs" "$OUT_DIR/probs"
tta=()
[ -n "$TTA" ] && tta=(--tta "$TTA")

val_probs=() test_probs=()
for seed in $SEEDS; do
    run="$OUT_DIR/runs/seed$seed"
    if [ -f "$run/metrics.json" ]; then
        echo "== seed $seed: $run is finished, reused"
    else
        echo "== seed $seed: training into $run"
        # shellcheck disable=SC2086  # FIT_OPTIONS is a list of options
        $KERAS_CXR fit "$RECIPE" --data-dir "$DATA_DIR" --out "$run" --overwrite --set "seed=$seed" $FIT_OPTIONS
    fi
    $KERAS_CXR predict "$run" --csv "$DATA_DIR/val.csv" --images "$DATA_DIR/images" "${tta[@]}" \
        --out "$OUT_DIR/probs/val_seed$seed.csv" --quiet
    $KERAS_CXR predict "$run" --csv "$TEST_CSV" --images "$IMAGES_DIR" "${tta[@]}" \
        --out "$OUT_DIR/probs/test_seed$seed.csv" --quiet
    val_probs+=("$OUT_DIR/probs/val_seed$seed.csv")
    test_probs+=("$OUT_DIR/probs/test_seed$seed.csv")
done

# Cross-validation parts keep a patient's images together when val.csv says who is who.
group=()
head -1 "$DATA_DIR/val.csv" | tr -d '\r' | tr ',' '\n' | grep -qx patient_id && group=(--group-by patient_id)
echo "== blend of ${#val_probs[@]} models, chosen by cross-validation on $DATA_DIR/val.csv"
$KERAS_CXR blend --method all --val "${val_probs[@]}" --labels "$DATA_DIR/val.csv" --test "${test_probs[@]}" \
    "${group[@]}" --out "$OUT_DIR/blend"
cp "$OUT_DIR/blend/probs.csv" "$OUT_DIR/test_probs.csv.tmp"
mv "$OUT_DIR/test_probs.csv.tmp" "$OUT_DIR/test_probs.csv"
echo "$OUT_DIR/test_probs.csv: the blend's probabilities for $TEST_CSV (how it was chosen: $OUT_DIR/blend/blend.json)"
