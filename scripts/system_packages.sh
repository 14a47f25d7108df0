#!/usr/bin/env bash
# Install the Debian packages the test suite's real parts need (skipped when all are present):
# one package name per line in PACKAGES below, with the tests that use it. Runs as root (or with
# passwordless sudo); .ci/run calls it on a fresh machine.
set -euo pipefail

PACKAGES=(
    curl            # the README's commands
    haproxy         # tests/integration/test_fleet.py: the balancer in front of three replicas
    libb64-0d       # perf_analyzer's shared library (tests/integration/test_triton_tools.py)
    dicom3tools     # dciodvfy: tests/integration/test_dicom_conformance.py (every object medserve writes)
    dcmtk           # storescu, dcmcjpeg: tests/integration/test_dicom_transfer_syntaxes.py
    orthanc         # a PACS for DIMSE / DICOMweb interoperability checks (loopback, remote access off)
    orthanc-dicomweb  # Orthanc's DICOMweb plugin, for the same checks
    chromium        # tests/integration/test_console_browser.py: the console in a real browser (headless)
    chromium-driver # chromedriver, through which selenium drives it
)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
echo "system_packages.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
