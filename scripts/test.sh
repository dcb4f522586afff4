#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need that is not a Python package, then the
# project, then runs pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, installed when missing (as root, with apt):
# - systemd: systemd-analyze verifies the units, systemd-socket-activate plays
#   systemd's part (without them those tests are skipped, and say so);
# - postgresql: tests/support/postgres.py starts a private cluster (initdb +
#   pg_ctl, as an unprivileged user) for the PostgreSQL store's tests (without
#   it they skip locally and fail on CI);
# - strace: tests/test_store_sync.py watches the daemon's LMDB commits reach
#   the disk (fdatasync, O_DSYNC meta writes);
# - nginx: tests/test_deployment_nginx.py puts it in front of two daemons, as
#   docs/deployment.md does (without it that test skips locally and fails on CI).
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
  missing+=(postgresql)
command -v strace >/dev/null || missing+=(strace)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
    echo "scripts/test.sh: could not install ${missing[*]}; the tests that need them skip (locally) or fail (CI)" >&2
fi
# The Node.js example's packages (tests/test_node_example.py runs it).
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
# buf, which lints the protos and checks them for wire breaks (tests/test_protos_buf.py).
(cd tools/buf && npm ci --no-audit --no-fund --loglevel=error)

# Three workers: the suite mostly waits on daemons and client processes. -rs
# lists every skipped test with its reason.
python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest -q -n 3 -rs "$@"
