#!/usr/bin/env bash
# The CPU workflow end to end: as many recipes/cpu.py models as a time budget allows, trained on DATA_DIR,
# their mean with a temperature fitted on validation, and OUT_DIR/test_probs.csv for TEST_CSV (its label
# cells may be empty).
#
#   bash recipes/cpu_best.sh DATA_DIR TEST_CSV IMAGES_DIR OUT_DIR
#
# DATA_DIR holds train.csv, val.csv and images/. Every choice (the members' recipe and input sizes, the plain
# mean, no TTA; see README, "Choosing the CPU recipe") was made on validation rows, and the temperature is
# fitted on DATA_DIR's validation rows; TEST_CSV's labels are never read.
# Finished members in OUT_DIR/runs are reused, so an interrupted workflow continues where it stopped.
# Settings (environment):
#   MEMBERS         the members, in training order, as SIZE:SEED (input size in pixels, seed), each
#                   recipes/cpu.py at that size (default "128:7 192:42 128:2026 128:11": a quick 128 px member
#                   first, whose time tells whether the slower 192 px one fits)
#   BUDGET_MINUTES  a member is trained only while the minutes spent so far, that member's estimated time and
#                   PREDICT_RESERVE_S fit in this budget, else skipped (default 25; the first member always
#                   trains). A member's time is estimated from the slowest one trained so far, scaled by the
#                   number of pixels (a 192 px member after a 128 px one: 192^2 / 128^2 of its time).
#                   0: train every member.
#                   The members used are printed and written to OUT_DIR/members.txt; rerun with those MEMBERS
#                   and BUDGET_MINUTES=0 to get the same files.
#   PREDICT_RESERVE_S  seconds the budget keeps for predicting validation and TEST_CSV with every member,
#                   evaluating and calibrating at the end (default 60; on cxr4's 311 + 310 rows this took 25 s
#                   with two members on a 2-core VM: raise it for a TEST_CSV of thousands of images)
#   MEMBER_OPTIONS  `keras-cxr fit` options for every member, after its size and seed (default none)
#   TTA             test-time views added to the identity, e.g. rotate,zoom (default none: on validation they
#                   lowered Macro-F1 for each of three models)
#   FIT_OPTIONS     extra `keras-cxr fit` options for every member, after MEMBER_OPTIONS
#   KERAS_CXR       the command (default: keras-cxr; e.g. ".venv/bin/python -m keras_cxr")
set -euo pipefail

if [ "$#" -ne 4 ]; then
    echo "usage: bash recipes/cpu_best.sh DATA_DIR TEST_CSV IMAGES_DIR OUT_DIR" >&2
    exit 2
fi
DATA_DIR=$1 TEST_CSV=$2 IMAGES_DIR=$3 OUT_DIR=$4
MEMBERS=${MEMBERS:-"128:7 192:42 128:2026 128:11"}
BUDGET_MINUTES=${BUDGET_MINUTES:-25}
MEMBER_OPTIONS=${MEMBER_OPTIONS-}
TTA=${TTA-}
FIT_OPTIONS=${FIT_OPTIONS-}
KERAS_CXR=${KERAS_CXR:-keras-cxr}
RECIPE="$(cd "$(dirname "$0")" && pwd)/cpu.py"
PREDICT_RESERVE_S=${PREDICT_RESERVE_S:-60}

for path in "$DATA_DIR/train.csv" "$DATA_DIR/val.csv" "$TEST_CSV"; do
    [ -f "$path" ] || { echo "cpu_best.sh: $path does not exist" >&2; exit 2; }
done
[ -d "$IMAGES_DIR" ] || { echo "cpu_best.sh: image folder $IMAGES_DIR does not exist" >&2; exit 2; }
[[ "$BUDGET_MINUTES" =~ ^[0-9]+$ ]] || { echo "cpu_best.sh: BUDGET_MINUTES must be a whole number, got '$BUDGET_MINUTES'" >&2; exit 2; }
[[ "$PREDICT_RESERVE_S" =~ ^[0-9]+$ ]] \
    || { echo "cpu_best.sh: PREDICT_RESERVE_S must be a whole number of seconds, got '$PREDICT_RESERVE_S'" >&2; exit 2; }
[ -n "${MEMBERS// /}" ] || { echo "cpu_best.sh: MEMBERS is empty" >&2; exit 2; }
for member in $MEMBERS; do
    [[ "$member" =~ ^[1-9][0-9]*:[0-9]+$ ]] \
        || { echo "cpu_best.sh: MEMBERS takes SIZE:SEED items like 192:42, got '$member'" >&2; exit 2; }
done
mkdir -p "$OUT_DIR/runs"
tta=()
[ -n "$TTA" ] && tta=(--tta "$TTA")

# A member's time is estimated as the slowest member so far (slowest_s seconds at slowest_size px) scaled by pixels.
start=$(date +%s) slowest_s=0 slowest_size=1 members=()
for member in $MEMBERS; do
    size=${member%%:*} seed=${member##*:}
    run="$OUT_DIR/runs/size${size}_seed${seed}"
    if [ -f "$run/metrics.json" ]; then
        echo "== member ${size} px, seed $seed: $run is finished, reused"
    else
        spent=$(( $(date +%s) - start ))
        estimate=$(( slowest_s * size * size / (slowest_size * slowest_size) ))
        if [ "$BUDGET_MINUTES" -gt 0 ] && [ "${#members[@]}" -gt 0 ] \
                && [ $(( spent + estimate + PREDICT_RESERVE_S )) -gt $(( BUDGET_MINUTES * 60 )) ]; then
            echo "== budget: ${spent} s spent, a ${size} px member takes about ${estimate} s and predicting" \
                "${PREDICT_RESERVE_S} s, ${BUDGET_MINUTES} min allowed: member ${size} px, seed $seed skipped"
            continue
        fi
        echo "== member ${size} px, seed $seed: training into $run"
        began=$(date +%s)
        # shellcheck disable=SC2086  # the option variables are lists of options
        $KERAS_CXR fit "$RECIPE" --data-dir "$DATA_DIR" --out "$run" --overwrite --image-size "$size" \
            --set "seed=$seed" $MEMBER_OPTIONS $FIT_OPTIONS
        took=$(( $(date +%s) - began ))
        if [ $(( took * slowest_size * slowest_size )) -gt $(( slowest_s * size * size )) ]; then
            slowest_s=$took slowest_size=$size
        fi
    fi
    members+=("$run")
done
printf '%s\n' "${members[@]}" > "$OUT_DIR/members.txt.tmp"
mv "$OUT_DIR/members.txt.tmp" "$OUT_DIR/members.txt"

# The mean over members (no weights fitted: on a few hundred validation rows, fitted blends lost to the mean
# when cross-validated), then one temperature fitted on the members' mean over the validation rows.
echo "== ${#members[@]} member(s): ${members[*]}"
$KERAS_CXR predict "${members[@]}" --csv "$DATA_DIR/val.csv" --images "$DATA_DIR/images" "${tta[@]}" \
    --out "$OUT_DIR/val_probs.csv" --quiet
$KERAS_CXR evaluate "$OUT_DIR/val_probs.csv" --labels "$DATA_DIR/val.csv"
$KERAS_CXR calibrate "$OUT_DIR/val_probs.csv" --labels "$DATA_DIR/val.csv" --out "$OUT_DIR/calibration.json"
$KERAS_CXR predict "${members[@]}" --csv "$TEST_CSV" --images "$IMAGES_DIR" "${tta[@]}" \
    --calibration "$OUT_DIR/calibration.json" --out "$OUT_DIR/test_probs.csv" --quiet
echo "$OUT_DIR/test_probs.csv: ${#members[@]} member(s), calibrated, for $TEST_CSV ($(( $(date +%s) - start )) s)"
