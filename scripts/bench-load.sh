#!/usr/bin/env bash
# One-command load benchmark (not run in CI): installs wrk and nginx when
# missing, builds the release binaries, and runs scripts/bench_load.py, which
# prints the comparison table. Knobs: DURATION (s per run, default 10),
# ROUNDS (default 3), CONNECTIONS (default 64), GROWTH=0 to skip the
# cost-growth measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked --bin tcsas-gateway --example baseline
exec python3 scripts/bench_load.py "$@"
