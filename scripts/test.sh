#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, and the integration tests against moto_server
# and a real sshd (which the tests start themselves on free ports of 127.0.0.1).
# Installs what the tests need first, idempotently (see scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

moto_server=$(scripts/install-test-deps.sh | tail -n 1)
export FLEETBAKE_MOTO_SERVER="$moto_server"

cargo fmt --all -- --check

# The tests run with a temp folder of their own (short: an ssh control socket goes four folders below it, and a
# Unix socket's path holds ~100 bytes; open to the test user, whose provisioners read and write in the tests'
# workspaces there); afterwards nothing they started may be running and no key file left, there or in /tmp
# (scripts/test-leftovers.sh).
suite_tmp=$(mktemp -d /tmp/fbt.XXXXXX)
chmod 755 "$suite_tmp"
clippy=""
trap 'rm -rf "$suite_tmp" "$suite_tmp.before" "$suite_tmp.clippy"; [ -z "$clippy" ] || kill "$clippy" 2>/dev/null || true' EXIT

# The tests' binaries first; then clippy runs beside the tests (they mostly wait on servers and timers), in a
# target folder of its own (it checks every dependency again anyway, and so never waits for the tests' lock).
cargo test --locked --no-run
cargo test --locked --bench '*' --no-run
scripts/test-leftovers.sh snapshot >"$suite_tmp.before"
target_dir=${CARGO_TARGET_DIR:-target}
cargo clippy --locked --all-targets --target-dir "$target_dir/clippy" -- -D warnings >"$suite_tmp.clippy" 2>&1 &
clippy=$!

status=0
TMPDIR="$suite_tmp" cargo test --locked || status=$?
clippy_status=0
wait "$clippy" || clippy_status=$?
cat "$suite_tmp.clippy"
if [ "$clippy_status" -ne 0 ]; then
  echo "error: cargo clippy --all-targets -- -D warnings failed (above)" >&2
  status=$clippy_status
fi
# The benches' small rows, in the debug build: each fails on a failed job, a leak or a changed schedule.
TMPDIR="$suite_tmp" cargo test --locked --bench '*' || status=$?
scripts/test-leftovers.sh check "$suite_tmp" "$suite_tmp.before" || status=1
exit "$status"
