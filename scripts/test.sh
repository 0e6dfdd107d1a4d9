#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, and the integration tests against moto_server
# and a real sshd (which the tests start themselves on free ports of 127.0.0.1).
# Installs what the tests need first, idempotently (see scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

moto_server=$(scripts/install-test-deps.sh | tail -n 1)
export FLEETBAKE_MOTO_SERVER="$moto_server"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

# The tests run with a temp folder of their own (short: an ssh control socket goes four folders below it, and a
# Unix socket's path holds ~100 bytes; open to the test user, whose provisioners read and write in the tests'
# workspaces there); afterwards nothing they started may be running and no key file left, there or in /tmp
# (scripts/test-leftovers.sh).
suite_tmp=$(mktemp -d /tmp/fbt.XXXXXX)
chmod 755 "$suite_tmp"
trap 'rm -rf "$suite_tmp" "$suite_tmp.before"' EXIT
scripts/test-leftovers.sh snapshot >"$suite_tmp.before"
status=0
TMPDIR="$suite_tmp" cargo test --locked || status=$?
# The benches' small rows, in the debug build: each fails on a failed job, a leak or a changed schedule.
TMPDIR="$suite_tmp" cargo test --locked --bench '*' || status=$?
scripts/test-leftovers.sh check "$suite_tmp" "$suite_tmp.before" || status=1
exit "$status"
