#!/usr/bin/env bash
# CI check that the package works when installed NON-editable, away from the source tree: an
# install that finds files through the checkout (a module outside ovdet_plugin/, a data file
# missing from package_data, ...) fails here although `make test` (editable install) passes.
#
#   bash tools/ci_wheel_smoke.sh              # VENV=.venv by default (the one `make install` made)
#   VENV=/path/to/venv KEEP=1 bash tools/ci_wheel_smoke.sh   # KEEP=1 keeps the temporary folder
#
# 1. Builds a wheel from a copy of the checkout's package files (a clean folder, so no stale
#    build/ of an earlier build can leak into the wheel).
# 2. Makes a fresh virtualenv and installs the wheel there with --no-deps. The dependencies
#    (torch, detectron2, ...) come from $VENV's site-packages through a path entry in a .pth file:
#    a plain path entry does not run $VENV's own .pth files, so its editable ovdet_plugin finder
#    is never installed and only the wheel's copy can be imported.
# 3. From a folder outside the checkout, with PYTHONPATH unset: imports ovdet_plugin (and checks
#    it is the wheel's copy), builds a tiny F-ViT (tiny CLIP ViT) from a config, generates a tiny dataset with
#    tools/generate_synthetic_data.py and runs tools/train_net.py for 2 iterations plus the
#    stock evaluation on it (tiny F-VLM: tiny CLIP ResNet).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv_py="$(cd "$repo" && realpath "${VENV:-.venv}")/bin/python"
if [ ! -x "$venv_py" ]; then
    echo "ci_wheel_smoke: no interpreter at $venv_py. Run 'make install' first (or set VENV)." >&2
    exit 1
fi
if ! git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    echo "ci_wheel_smoke: $repo is not a git checkout; the wheel is built from the files git" \
        "knows. Run it in a clone." >&2
    exit 1
fi
tmp="$(mktemp -d "${TMPDIR:-/tmp}/ovdet_wheel_smoke.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then
    echo "ci_wheel_smoke: keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
start=$(date +%s)

# 1. The wheel, from the files git knows (tracked or new and not ignored), as a fresh clone has.
mkdir -p "$tmp/src" "$tmp/dist"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard -- \
    setup.py setup.cfg pyproject.toml MANIFEST.in README.md ovdet_plugin) |
    (cd "$repo" && tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) |
    tar -xf - -C "$tmp/src"
"$venv_py" -m pip wheel --quiet --no-deps --no-build-isolation -w "$tmp/dist" "$tmp/src"
wheel="$(ls "$tmp"/dist/ovdet_plugin-*.whl)"
echo "ci_wheel_smoke: built $(basename "$wheel")"

# 2. A fresh virtualenv (no pip: $VENV's pip installs into it), dependencies from $VENV.
"$venv_py" -m venv --without-pip "$tmp/venv"
py="$tmp/venv/bin/python"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$venv_py" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' |
    sort -u >"$site/ovdet_ci_dependencies.pth"
"$venv_py" -m pip --python "$py" install --quiet --no-deps --no-index "$wheel"

# 3. The smoke run, outside the checkout, with nothing pointing back at it but the tool paths.
mkdir -p "$tmp/run"
cd "$tmp/run"
# Offline, with a text-embedding cache of its own.
run() {
    env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP HF_HUB_OFFLINE=1 OVDET_CACHE="$tmp/cache" "$@"
}
run "$py" - "$tmp/venv" "$repo/configs/test/tiny_fvit.yaml" <<'EOF'
import os
import sys

import ovdet_plugin

venv, config = sys.argv[1:]
where = os.path.realpath(ovdet_plugin.__file__)
if not where.startswith(os.path.realpath(venv) + os.sep):
    sys.exit(f"ovdet_plugin was imported from {where}, not from the wheel installed in {venv}")
if any("editable" in repr(f).lower() for f in sys.meta_path):
    sys.exit(f"an editable-install finder is active: {sys.meta_path}")
from detectron2.modeling import build_model

cfg = ovdet_plugin.get_ovdet_cfg(config, ["MODEL.DEVICE", "cpu"])
model = build_model(cfg)
print(f"ci_wheel_smoke: ovdet_plugin from {where}; built {type(model).__name__} from {config}")
EOF
run "$py" "$repo/tools/generate_synthetic_data.py" --out "$tmp/datasets/ovdet_synthetic" \
    --num-train 4 --num-val 2 --num-pretrain 0 --no-progress >"$tmp/generate.log" 2>&1 ||
    { cat "$tmp/generate.log"; exit 1; }
if ! DETECTRON2_DATASETS="$tmp/datasets" OMP_NUM_THREADS=1 run "$py" "$repo/tools/train_net.py" \
    --config-file "$repo/configs/test/tiny_fvlm.yaml" \
    MODEL.META_ARCHITECTURE OVRCNN \
    DATASETS.TRAIN '("ovdet_synthetic_train",)' DATASETS.TEST '("ovdet_synthetic_val",)' \
    MODEL.OVD.TRAIN_VOCABULARY dataset:ovdet_synthetic_train \
    SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.001 DATALOADER.NUM_WORKERS 0 \
    INPUT.MIN_SIZE_TRAIN '(96,)' INPUT.MIN_SIZE_TEST 96 OUTPUT_DIR "$tmp/train" \
    >"$tmp/train.log" 2>&1; then
    tail -n 60 "$tmp/train.log"
    echo "ci_wheel_smoke: tools/train_net.py failed with the wheel install (log above)" >&2
    exit 1
fi
for f in model_final.pth eval_results.json; do
    [ -e "$tmp/train/$f" ] || { tail -n 40 "$tmp/train.log"; echo "no $tmp/train/$f" >&2; exit 1; }
done
echo "ci_wheel_smoke: passed in $(( $(date +%s) - start )) s"
