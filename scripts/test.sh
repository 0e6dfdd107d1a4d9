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
cargo test --locked
