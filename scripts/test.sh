#!/usr/bin/env bash
# Install medserve with its test dependencies into .venv, check lint and types, and run the whole
# test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[examples,jobs,test]"
.venv/bin/ruff check medserve tests benchmarks
.venv/bin/mypy medserve
exec .venv/bin/python -m pytest "$@"
