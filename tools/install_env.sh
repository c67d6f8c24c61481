#!/usr/bin/env bash
# Create (if missing) and fill the project's virtualenv: pinned torch/torchvision, detectron2, the
# other dependencies, and ovdet_plugin itself in editable mode. Idempotent: when nothing it depends
# on changed since the last successful run, it returns in well under a second.
#
#   VENV=.venv           where the virtualenv lives
#   PYTHON=python3       interpreter used to create it
#   DETECTRON2=registry  (default) pure-Python detectron2 repacked from the `sal-detectron2` wheel
#   DETECTRON2=git       upstream detectron2 from GitHub (needs internet and a compiler)
# An already importable detectron2 is always kept.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DETECTRON2=${DETECTRON2:-registry}
STAMP="$VENV/.ovdet-install-stamp"

stamp_value() {
  cat constraints.txt setup.py tools/install_env.sh | sha256sum | cut -d' ' -f1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# A new environment takes about 6.1 GiB (torch's CUDA build, its nvidia-* libraries and triton:
# 5.2 GiB), so the free space is checked first: pip, when the disk fills, stops midway with
# "[Errno 28] No space left on device" and leaves a half-filled virtualenv.
# OVDET_SKIP_DISK_CHECK=1 skips the check; OVDET_INSTALL_NEED_GIB sets the amount (the tests).
NEED_GIB=${OVDET_INSTALL_NEED_GIB:-6.5}
if [ "${OVDET_SKIP_DISK_CHECK:-0}" != 1 ] && ! "$PY" -c "import torch" 2>/dev/null; then
  free_kib=$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')
  if [ -n "$free_kib" ] && awk -v k="$free_kib" -v g="$NEED_GIB" 'BEGIN {exit !(k < g * 1048576)}'; then
    echo "[install] not enough disk space for $VENV: $(awk -v k="$free_kib" 'BEGIN {printf "%.1f", k / 1048576}') GiB" \
      "free on its filesystem, about $NEED_GIB GiB needed (torch with its CUDA libraries)." \
      "Free some space, or put the environment on another disk (make install VENV=/other/disk/venv)," \
      "or set OVDET_SKIP_DISK_CHECK=1 to try anyway." >&2
    exit 1
  fi
fi

echo "[install] torch, torchvision and the other pinned dependencies (constraints.txt)"
"${PIP[@]}" install -q -c constraints.txt torch torchvision open_clip_torch fvcore iopath \
  pycocotools opencv-python-headless numpy 'setuptools' visaionlvis wheel pytest

if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[install] detectron2: already importable, kept ($("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))'))"
elif [ "$DETECTRON2" = "git" ]; then
  echo "[install] detectron2: route 'git' (upstream source from GitHub, compiled here)"
  "${PIP[@]}" install -c constraints.txt --no-build-isolation \
    'git+https://github.com/facebookresearch/detectron2.git'
elif [ "$DETECTRON2" = "registry" ]; then
  echo "[install] detectron2: route 'registry' (pure-Python detectron2 from sal-detectron2 0.7.2," \
    "its mismatched _C binary removed)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 \
    -d "$tmp/dl" sal-detectron2==0.7.2
  "$PY" -m wheel unpack -d "$tmp/unpacked" "$tmp"/dl/*.whl >/dev/null
  pkg=$(echo "$tmp"/unpacked/*)
  rm -f "$pkg"/detectron2/_C*.so
  sed -i 's/^Tag: .*/Tag: py3-none-any/' "$pkg"/*.dist-info/WHEEL
  # (Its metadata asks for numpy<2; constraints.txt pins numpy 1.26.4, which satisfies it.)
  mkdir -p "$tmp/packed"
  "$PY" -m wheel pack -d "$tmp/packed" "$pkg" >/dev/null
  "${PIP[@]}" install -q -c constraints.txt "$tmp"/packed/*.whl
else
  echo "[install] unknown DETECTRON2=$DETECTRON2 (expected 'registry' or 'git')" >&2
  exit 2
fi

echo "[install] ovdet_plugin (editable)"
"${PIP[@]}" install -q -c constraints.txt --no-build-isolation -e '.[dev]'
"$PY" -c "import detectron2, open_clip, torchvision, lvis, ovdet_plugin" \
  || { echo "[install] import check failed" >&2; exit 1; }
stamp_value >"$STAMP"
echo "[install] done: $("$PY" -c 'import torch, detectron2; print("torch", torch.__version__, "| detectron2", detectron2.__version__)')"
