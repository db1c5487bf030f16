#!/usr/bin/env bash
# Quick start, step 1: create .venv, install the project, and run the whole DVC pipeline on the
# embedded synthetic demo sources (offline, no credentials). Safe to rerun: DVC skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/brainmri demo
