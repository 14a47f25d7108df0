#!/usr/bin/env bash
# Install medserve into .venv with the given extras (default: examples,jobs) and ONNX Runtime's
# flavour, once.
#
#   bash scripts/install.sh [EXTRAS]        e.g. bash scripts/install.sh examples,jobs,test
#   MEDSERVE_ONNXRUNTIME=gpu bash scripts/install.sh
#
# MEDSERVE_ONNXRUNTIME picks ONNX Runtime's flavour, added as an extra: `cpu` (the default: the
# `onnxruntime` package) or `gpu` (`onnxruntime-gpu`, with the CUDA and TensorRT providers, and NVML).
# Unset, it keeps the flavour installed before, else cpu. The two cannot share an environment, so
# switching flavours removes the other one first.
#
# A later run does nothing (and needs no network) unless the packaging changed: pyproject.toml,
# setup.py, the gRPC .proto files or their build step. An install with more extras serves a request
# for fewer (the test install serves the server). The install is editable: a change to medserve's
# Python code needs no reinstall. MEDSERVE_VENV names another virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-examples,jobs}"
VENV="${MEDSERVE_VENV:-.venv}"
STAMP="$VENV/.medserve-install"
FLAVOUR="${MEDSERVE_ONNXRUNTIME:-}"
if [ -z "$FLAVOUR" ]; then
    # Unset: keep the flavour installed before (so serve.sh and test.sh keep a GPU install), else cpu.
    FLAVOUR=cpu
    if [ -f "$STAMP" ] && tail -n +2 "$STAMP" | grep -qx gpu; then
        FLAVOUR=gpu
    fi
fi
case "$FLAVOUR" in
    cpu) OTHER=onnxruntime-gpu ;;
    gpu) OTHER=onnxruntime ;;
    *)
        echo "install.sh: MEDSERVE_ONNXRUNTIME must be 'cpu' or 'gpu', not '$FLAVOUR'" >&2
        exit 2
        ;;
esac
EXTRAS="$EXTRAS,$FLAVOUR"

packaging="$(cat pyproject.toml setup.py medserve/protocol/build_proto.py medserve/protocol/proto/*.proto | sha256sum | cut -d' ' -f1)"

installed_covers() {
    # The stamp holds the packaging digest, then the installed extras, one per line.
    [ -x "$VENV/bin/medserve" ] && [ -f "$STAMP" ] || return 1
    [ "$(head -n 1 "$STAMP")" = "$packaging" ] || return 1
    local extra
    for extra in ${EXTRAS//,/ }; do
        tail -n +2 "$STAMP" | grep -qx "$extra" || return 1
    done
}

if installed_covers; then
    exit 0
fi

echo "install.sh: installing medserve[$EXTRAS] into $VENV (once; again only when the packaging changes)" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if "$VENV/bin/python" -m pip show --quiet "$OTHER" >/dev/null 2>&1; then
    # Both flavours write the same onnxruntime/ package: remove both, then install the one asked for.
    echo "install.sh: replacing $OTHER with ONNX Runtime's $FLAVOUR flavour" >&2
    "$VENV/bin/python" -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu
fi
# The build backend's notes about editable installs are meant for package authors, not for users.
PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
{ echo "$packaging"; tr ',' '\n' <<< "$EXTRAS"; } > "$STAMP"
