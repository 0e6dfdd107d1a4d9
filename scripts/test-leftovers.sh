#!/usr/bin/env bash
# What a test run left behind, for scripts/test.sh.
#
#   scripts/test-leftovers.sh snapshot
#       prints the names in /tmp a test run could leave (`fb-*`, `fleetbake-*`): the "before" list.
#   scripts/test-leftovers.sh check SUITE_TMPDIR BEFORE_FILE
#       fails (exit 1, naming each) if the tests run with TMPDIR=SUITE_TMPDIR left a process or a key file:
#         - a process the suite started: moto_server inherits TMPDIR=SUITE_TMPDIR and fleetbake a TMPDIR under
#           it; the test sshd's and the ssh control master's (`ssh -M`) command lines name their config file and
#           control socket there, the sshd's connections are its descendants, and the test user's (`fbtest`)
#           sessions and provisioner loops carry FBTEST_SUITE_TMPDIR=SUITE_TMPDIR (the test sshd's `SetEnv`).
#           Processes of other users of the machine (another suite, a developer's own sshd) have none of these,
#           and are not flagged.
#         - a key folder (`fb-*`), a private key (`key`, `*.pem`) or an ssh control folder (`.ssh-connection*`)
#           in SUITE_TMPDIR;
#         - in /tmp, not in BEFORE_FILE: a `fb-*` key folder (another test run on the same machine at the same
#           time could be blamed for one), or a `fleetbake-*` provisioner script naming SUITE_TMPDIR.
#       Processes get a few seconds to end first. Flagged processes are then stopped (SIGKILL) and the suite's
#       provisioner scripts removed, so the next run starts clean; SUITE_TMPDIR is the caller's to remove.
#   scripts/test-leftovers.sh list SUITE_TMPDIR
#       prints the processes marked as the suite's (pid, user, command), e.g. while the tests run.
set -euo pipefail

snapshot() {
  find /tmp -mindepth 1 -maxdepth 1 \( -name 'fb-*' -o -name 'fleetbake-*' \) -printf '%f\n' 2>/dev/null | sort
}

# The processes the suite in SUITE_TMPDIR started, one a line: pid, user, command. Marked by their environment
# (TMPDIR, or the test sshd's FBTEST_SUITE_TMPDIR), or by a command line naming SUITE_TMPDIR (sshd and the ssh
# control master overwrite their environment with their process title, which names their config file or control
# socket there); and the descendants of those (sshd's per-connection processes).
marked_processes() {
  local suite=$1 dir pid environ args stat ppid user
  declare -A marked=() line=() parent=()
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" != "$$" ] && [ "$pid" != "$BASHPID" ] || continue
    args=$({ tr '\0' ' ' <"$dir/cmdline"; } 2>/dev/null) || continue
    # Kernel threads and zombies have no command line.
    [ -n "$args" ] || continue
    stat=$({ cat "$dir/stat"; } 2>/dev/null) || continue
    stat=${stat##*) }
    ppid=$(cut -d' ' -f2 <<<"$stat")
    user=$(stat -c %U "$dir" 2>/dev/null) || continue
    environ=$({ tr '\0' '\n' <"$dir/environ"; } 2>/dev/null) || environ=
    line[$pid]="$pid $user $args"
    parent[$pid]=$ppid
    if grep -qxF -e "TMPDIR=$suite" -e "FBTEST_SUITE_TMPDIR=$suite" <<<"$environ" \
      || grep -qF "TMPDIR=$suite/" <<<"$environ" || [[ "$args" == *"$suite/"* ]]; then
      marked[$pid]=1
    fi
  done
  local grew=1
  while [ "$grew" = 1 ]; do
    grew=0
    for pid in "${!line[@]}"; do
      if [ -z "${marked[$pid]:-}" ] && [ -n "${marked[${parent[$pid]}]:-}" ]; then
        marked[$pid]=1
        grew=1
      fi
    done
  done
  for pid in "${!marked[@]}"; do
    echo "${line[$pid]}"
  done | sort -n
}

left_files() {
  local suite=$1 before=$2 name
  find "$suite" -mindepth 1 \( -name 'fb-*' -o -name key -o -name '*.pem' -o -name '.ssh-connection*' \) \
    -prune -print 2>/dev/null
  snapshot | comm -13 "$before" - | while read -r name; do
    # A key folder of fleetbake's (a test workspace or sshd folder of another run's harness has no `key`), or a
    # provisioner script of this suite's (it names its workspace).
    if { [ -e "/tmp/$name/key" ]; } 2>/dev/null || grep -qsF "$suite/" "/tmp/$name"; then
      echo "/tmp/$name"
    fi
  done
}

check() {
  local suite=$1 before=$2 processes files
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    processes=$(marked_processes "$suite")
    [ -n "$processes" ] || break
    sleep 1
  done
  files=$(left_files "$suite" "$before")
  if [ -z "$processes" ] && [ -z "$files" ]; then
    return 0
  fi
  echo "error: the tests left these behind:" >&2
  if [ -n "$processes" ]; then
    echo "  processes (pid, user, command):" >&2
    sed 's/^/    /' <<<"$processes" >&2
  fi
  if [ -n "$files" ]; then
    echo "  files:" >&2
    sed 's/^/    /' <<<"$files" >&2
  fi
  if [ -n "$processes" ]; then
    cut -d' ' -f1 <<<"$processes" | xargs -r kill -KILL 2>/dev/null || true
  fi
  # The suite's provisioner scripts; key folders in /tmp may be another run's, in use: left for a person.
  grep '^/tmp/fleetbake-' <<<"$files" | xargs -r -d '\n' rm -f -- || true
  return 1
}

case "${1:-}" in
  snapshot) snapshot ;;
  check) check "$2" "$3" ;;
  list) marked_processes "$2" ;;
  *)
    echo "usage: $0 snapshot | check SUITE_TMPDIR BEFORE_FILE | list SUITE_TMPDIR" >&2
    exit 2
    ;;
esac
