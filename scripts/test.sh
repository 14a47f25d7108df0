#!/usr/bin/env bash
# Install medserve with its test dependencies into .venv and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[examples,test]"
exec .venv/bin/python -m pytest "$@"
