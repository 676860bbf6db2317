#!/usr/bin/env bash
# Runs the opt-in test of a TCP peer whose host vanishes (no FIN, no RST) inside a private network
# namespace, where taking the loopback interface down loses every packet without touching the
# machine's own network. Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and a built test bundle
# (`swift build --build-tests`). Takes about 35 s.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=$(find .build -path '*debug/MorainePackageTests.xctest' -type f | head -1)
[ -n "$bundle" ] || { echo "build the tests first: swift build --build-tests" >&2; exit 2; }
exec unshare --net sh -c "ip link set lo up && MORAINE_NETNS_PROBE=1 '$bundle' --disable-xctest \
    --testing-library swift-testing --filter 'vanishedPeer\(\)'"
