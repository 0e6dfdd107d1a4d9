#!/bin/sh
# Provisioner of the example fleet: installs Docker with the uploaded daemon.json.
set -eu
echo "installing docker for $FLEETBAKE_FLAVOR in $FLEETBAKE_REGION (run $FLEETBAKE_RUN_ID)"
sudo apt-get update -q
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
sudo install -m 0644 /tmp/daemon.json /etc/docker/daemon.json
