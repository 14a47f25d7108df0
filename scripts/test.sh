#!/usr/bin/env bash
# Install medserve with its test dependencies into .venv (once; again only when the packaging
# changes), check lint and types, and run the whole test suite. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh tests/unit          # the unit tier alone (no sockets, no processes; < 1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh examples,jobs,ray,test
.venv/bin/ruff check medserve tests benchmarks
.venv/bin/mypy medserve
exec .venv/bin/python -m pytest "$@"
