#!/usr/bin/env bash
# Runs every check and test from a fresh checkout: creates .venv, installs the package with
# what the tests need, then lint, types and the test suite (in parallel). Test fixtures
# install or start the rest themselves (Wine and Windows Python, a PostgreSQL cluster,
# PgBouncer, a Redis server) when the machine lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,postgres,redis,bench]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/mypy --platform win32
.venv/bin/mypy --platform darwin
.venv/bin/python -m pytest -n auto "$@"
