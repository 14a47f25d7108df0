#!/usr/bin/env bash
# Install medserve into .venv with the given extras (default: examples,jobs), once.
#
#   bash scripts/install.sh [EXTRAS]        e.g. bash scripts/install.sh examples,jobs,test
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
# The build backend's notes about editable installs are meant for package authors, not for users.
PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
{ echo "$packaging"; tr ',' '\n' <<< "$EXTRAS"; } > "$STAMP"
