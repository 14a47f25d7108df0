#!/usr/bin/env bash
# Install medserve into .venv, build the example model repository, and serve it
# (HTTP on 127.0.0.1:8000, gRPC on 127.0.0.1:8001). Extra arguments go to `medserve serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[examples,jobs]"
.venv/bin/medserve examples build model_repository
# Every door needs a token (health endpoints excepted): on first start, make an admin token.
if [ "${MEDSERVE_AUTH_DISABLED:-false}" != "true" ] && [ -z "$(.venv/bin/medserve tokens list)" ]; then
  echo "No API tokens yet; an admin token for this server (shown once, keep it safe):"
  .venv/bin/medserve tokens create --role admin --name bootstrap-admin
fi
exec .venv/bin/medserve serve --repository model_repository "$@"
