#!/usr/bin/env bash
# The main job on this machine, no AWS account needed: starts moto_server (EC2) on 127.0.0.1:5055 and a
# private sshd on 127.0.0.1:2222 (standing in for every build instance), then runs
#   fleetbake matrix examples/local/fleet.toml
# and prints the manifest. Both servers stop when it ends. Needs root (sshd, and the first install).
set -euo pipefail
cd "$(dirname "$0")/.."

moto_port=5055
ssh_port=2222
moto_server=$(scripts/install-test-deps.sh | tail -n 1)
cargo build
work=$(mktemp -d /tmp/fleetbake-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: nothing listens on 127.0.0.1:$1 after 30 s ($2)" >&2
  exit 1
}

"$moto_server" -H 127.0.0.1 -p "$moto_port" > "$work/moto.log" 2>&1 &
pids+=($!)

mkdir -p -m 0755 /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/host_ed25519"
cat > "$work/sshd_config" <<CONFIG
ListenAddress 127.0.0.1
Port $ssh_port
HostKey $work/host_ed25519
PidFile $work/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
# Accept whichever temporary key the build created, as cloud-init would have installed it.
AuthorizedKeysFile none
AuthorizedKeysCommand /bin/echo %t %k
AuthorizedKeysCommandUser nobody
AllowUsers fbtest
MaxStartups 64:30:128
MaxSessions 64
CONFIG
/usr/sbin/sshd -f "$work/sshd_config" -D -e 2> "$work/sshd.log" &
pids+=($!)

wait_for_port "$moto_port" "moto_server, see $work/moto.log"
wait_for_port "$ssh_port" "sshd, see $work/sshd.log"

status=0
AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true \
  target/debug/fleetbake matrix examples/local/fleet.toml || status=$?
echo "--- examples/local/manifest.json"
cat examples/local/manifest.json
exit "$status"
