#!/usr/bin/env bash
# Installs what the tests and the local demo need, idempotently:
#   - moto's standalone EC2 server (PyPI `moto[server]`) in a private venv
#   - a real sshd (Debian `openssh-server`), not started as a system service
#   - the unprivileged login users the test sshd lets in (`fbtest`; `fbkeys`, whose authorized_keys a test
#     watches)
#   - `script` (a pseudo-terminal for the live view's tests) and `pkill` (Debian `bsdutils`, `procps`)
#   - Debian's `packer` (1.6.6, its amazon-ebs builder built in): benches/anchor.rs bakes the same images with
#     it and with fleetbake on moto, and compares wall and calls (~15 s to install here)
# Prints the path of `moto_server` on its last line.
set -euo pipefail

tools_dir="${FLEETBAKE_TOOLS_DIR:-${HOME:-/root}/.cache/fleetbake/tools}"
venv="$tools_dir/venv"
moto_version="${FLEETBAKE_MOTO_VERSION:-5.2.5}"

if [ ! -x "$venv/bin/moto_server" ]; then
  echo "installing moto[server] into $venv" >&2
  mkdir -p "$tools_dir"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version" >&2
fi

if [ ! -x /usr/sbin/sshd ]; then
  echo "installing openssh-server" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: openssh-server is missing and installing it needs root (apt-get install openssh-server)" >&2
    exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >&2
fi

missing=()
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
command -v pkill >/dev/null 2>&1 || missing+=(procps)
command -v packer >/dev/null 2>&1 || missing+=(packer)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing and installing needs root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

for user in fbtest fbkeys; do
  if ! id "$user" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "error: the test login user \`$user\` is missing and creating it needs root" >&2
      exit 1
    fi
    useradd --create-home --shell /bin/sh "$user"
    # With UsePAM no, the default locked password (`!`) refuses even key logins; `*` allows keys only.
    usermod -p '*' "$user"
  fi
done

echo "$venv/bin/moto_server"
