#!/usr/bin/env bash
# Install medserve into .venv (once), build the example model repository (once), and serve it:
# HTTP on 127.0.0.1:8000, gRPC on 127.0.0.1:8001, DICOM on port 11112. Extra arguments go to
# `medserve serve` (for example --http-port 9000). A second run reinstalls and rebuilds nothing; it
# only starts the server, as `.venv/bin/medserve serve --repository model_repository` does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh examples,jobs
.venv/bin/medserve examples build model_repository
# Every door needs a token (health endpoints excepted): on first start, make an admin token.
if [ "${MEDSERVE_AUTH_DISABLED:-false}" != "true" ] && [ -z "$(.venv/bin/medserve tokens list --init)" ]; then
  echo "No API tokens yet; an admin token for this server (shown once, keep it safe):"
  .venv/bin/medserve tokens create --role admin --name bootstrap-admin
fi
exec .venv/bin/medserve serve --repository model_repository "$@"
