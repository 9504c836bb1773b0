#!/usr/bin/env bash
# Hostile-input suite: creates the virtualenv target/hostile-venv (pika), builds the release
# worker and runs tests/hostile/hostile.py against the local RabbitMQ and PostgreSQL.
# Arguments are passed through (e.g. --quick, --only TEXT, --group NAME, --list).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/hostile-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/hostile/requirements.txt
cargo build --release --locked --bin case-intake
exec "$venv/bin/python" tests/hostile/hostile.py "$@"
