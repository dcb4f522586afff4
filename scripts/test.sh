#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need that is not a Python package, then the
# project, then runs pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd's tools: systemd-analyze verifies the units, systemd-socket-activate
# plays systemd's part. Without them those two tests are skipped (they say so).
if ! command -v systemd-analyze >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends systemd >/dev/null; } ||
    echo "scripts/test.sh: could not install systemd; its tool tests will be skipped" >&2
fi
# PostgreSQL's server programs: tests/support/postgres.py starts a private
# cluster (initdb + pg_ctl, as an unprivileged user) for the PostgreSQL store's
# tests. Without them those tests are skipped locally and fail on CI.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 &&
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } ||
    echo "scripts/test.sh: could not install postgresql; its tests fail on CI, skip elsewhere" >&2
fi
# The Node.js example's packages (tests/test_node_example.py runs it).
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
# buf, which lints the protos and checks them for wire breaks (tests/test_protos_buf.py).
(cd tools/buf && npm ci --no-audit --no-fund --loglevel=error)

python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest -q -n 3 "$@"
