#!/usr/bin/env bash
# Train the ShapesWorld base on a GPU as the product does it: a native-64 px world project
# (backend.base_model.base_project), then `signal-backend run` of resources/recipes/shapes_base_gpu.toml
# and of shapes_base_gpu_continue.toml from the first job's model. On an H200: ~95 s to render and
# import 25 000 scenes, ~100 s to fill the latent and caption caches, 230 s + 301 s of training.
# STAGES=1 or STAGES=2 runs one job (the project stays under WORK, so a second call on the same
# machine continues). CALIBRATE=1 first measures images/s with a short job (CALIB_STEPS steps) and
# sets stage 1's step count to what fits BUDGET_S seconds (how the shipped base was first made, on
# a 15-minute lease). The model comes back in parts (the device returns files of at most 16 MiB);
# bench/gpu_base_ship.py measures it here with the real MiniLM and ships it.
#
# On the device (wheels in .whl, the packed encoder in .gpu/minilm from bench/gpu_minilm.py pack):
#   bash bench/gpu_base.sh    (env: STAGES, IMAGES, CALIBRATE, BUDGET_S, CALIB_STEPS, RECIPE, CONTINUE_RECIPE,
#                              PY, WORK, OUT; SKIP_WHEELS=1 to try it on a machine that has the packages)
set -uo pipefail
T0=$(date +%s)
PY=${PY:-python3}
IMAGES=${IMAGES:-25000}
BUDGET_S=${BUDGET_S:-540}
CALIB_STEPS=${CALIB_STEPS:-200}
CALIBRATE=${CALIBRATE:-0}
STAGES=${STAGES:-12}
RESERVE_S=${RESERVE_S:-100}
RECIPE=${RECIPE:-resources/recipes/shapes_base_gpu.toml}
CONTINUE_RECIPE=${CONTINUE_RECIPE:-resources/recipes/shapes_base_gpu_continue.toml}
WORK=${WORK:-/tmp/gpu_base}
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_base.log") 2>&1

collect() {
    cp "$RECIPE" "$OUT/recipe.toml" 2>/dev/null
    cat "$WORK"/bp/runs/*/log.txt > "$OUT/runs_log.txt" 2>/dev/null
    model=$(ls -d "$WORK"/bp/models/shapes-base-gpu-continued-* 2>/dev/null | tail -1)
    [ -z "$model" ] && model=$(ls -d "$WORK"/bp/models/shapes-base-gpu-job-* 2>/dev/null | tail -1)
    if [ -n "$model" ]; then
        tar cf "$WORK/model.tar" -C "$(dirname "$model")" "$(basename "$model")" && split -b 15M "$WORK/model.tar" "$OUT/model.tar.part-"
    fi
    echo "[gpu_base] done after $(( $(date +%s) - T0 )) s; returned: $(ls "$OUT" | tr '\n' ' ')"
}
trap collect EXIT

if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl || exit 1
fi
export PYTHONPATH="$WORK/site:$PWD" SIGNAL_STUDIO_HOME="$WORK/home" PYTHONUNBUFFERED=1
$PY bench/gpu_minilm.py unpack .gpu/minilm "$WORK/minilm" --site "$WORK/site" || exit 1
nvidia-smi -L 2>/dev/null
$PY -c "import torch, diffusers, transformers; print('[gpu_base] torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

if [[ $STAGES == *1* ]]; then
    echo "[gpu_base] rendering $IMAGES scenes at 64 px ($(( $(date +%s) - T0 )) s)"
    $PY -c "from pathlib import Path; from backend.base_model import base_project; base_project(Path('$WORK/bp'), 'shapesworld-64', $IMAGES)" || exit 1
    $PY bench/gpu_minilm.py check "$WORK/minilm" .gpu/minilm "$WORK/bp/project.db" || exit 1
    if [ "$CALIBRATE" = 1 ]; then
        echo "[gpu_base] calibration: $CALIB_STEPS steps ($(( $(date +%s) - T0 )) s)"
        sed -e "0,/^steps = /s/^steps = .*/steps = $CALIB_STEPS/" -e '0,/^name = /s/^name = .*/name = "calib"/' -e 's/^log_every = .*/log_every = 50/' \
            -e 's/^sample_every = .*/sample_every = 1000000/' -e 's/^eval_images = .*/eval_images = 20/' "$RECIPE" > "$WORK/calib.toml"
        $PY -m backend run "$WORK/calib.toml" --project "$WORK/bp" > "$WORK/calib.json" || exit 1
        rate=$(grep -o '[0-9.]* img/s' "$WORK"/bp/runs/*/log.txt | tail -1 | cut -d' ' -f1)
        batch=$(grep -o '^batch_size = [0-9]*' "$RECIPE" | grep -o '[0-9]*$')
        left=$(( T0 + BUDGET_S - RESERVE_S - $(date +%s) ))
        steps=$(( left * ${rate%.*} / batch / 100 * 100 ))
        [ "$steps" -lt 100 ] && steps=100
        echo "[gpu_base] $rate img/s at batch $batch; $left s left for training -> $steps steps"
        sed -i "0,/^steps = /s/^steps = .*/steps = $steps/" "$RECIPE"  # the curriculum's, not the sampler's
    fi
    echo "[gpu_base] stage 1: $RECIPE ($(( $(date +%s) - T0 )) s)"
    $PY -m backend run "$RECIPE" --project "$WORK/bp" > "$WORK/train.json" || exit 1
    cp "$WORK/train.json" "$OUT/train.json"
fi
if [[ $STAGES == *2* ]]; then
    first=$(ls -d "$WORK"/bp/models/shapes-base-gpu-job-* | tail -1)
    echo "[gpu_base] stage 2: $CONTINUE_RECIPE from $first ($(( $(date +%s) - T0 )) s)"
    sed "s|^init = .*|init = \"$first\"|" "$CONTINUE_RECIPE" > "$WORK/continue.toml"
    $PY -m backend run "$WORK/continue.toml" --project "$WORK/bp" > "$WORK/train_continued.json" || exit 1
    cp "$WORK/train_continued.json" "$OUT/train_continued.json"
fi
