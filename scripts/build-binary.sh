#!/usr/bin/env bash
# Build dist/connector-proxy: one executable file holding Python, the connector
# and every dependency, for machines with no Python.  The same script on Linux
# and macOS (Windows: scripts/build-binary.ps1).  Needs the connector's
# dependencies and PyInstaller in the Python it runs ($PYTHON, default python3):
#     python3 -m pip install '.[binary]'
# The executable runs on the OS and CPU it was built on, with a C library at
# least as new as this machine's (build on the oldest Linux you support).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

# PyInstaller follows imports, including those inside functions, so the
# reactor twisted.internet.default picks at run time (epoll on Linux, select
# on macOS and Windows), pyOpenSSL and service_identity (twisted.internet.ssl),
# idna's tables and prometheus_client come along, and cryptography's Rust
# bindings with the hook from pyinstaller-hooks-contrib; scripts/test-binary.sh
# checks each at run time.  The twistd plugins are not needed: connector-proxy
# never looks for plugins.  setuptools, pkg_resources and distutils are reached
# only through build-time helpers (incremental's), tkinter and trial not at all.
"$python" -m PyInstaller --noconfirm --clean --log-level WARN \
    --onefile --name connector-proxy \
    --distpath dist --workpath build/pyinstaller --specpath build/pyinstaller \
    --paths . \
    --exclude-module setuptools --exclude-module pkg_resources --exclude-module distutils \
    --exclude-module tkinter --exclude-module twisted.trial \
    scripts/connector-proxy-entry.py
ls -l dist/connector-proxy
