#!/bin/sh
set -eu
echo "$GREETING from $FLEETBAKE_FLAVOR in $FLEETBAKE_REGION (run $FLEETBAKE_RUN_ID)"
cat /tmp/fleetbake-demo-motd.txt
