#!/usr/bin/env bash
# One-command load benchmark (not run in CI): installs wrk and nginx when
# missing, builds the release binaries (and the static musl build the
# container image ships, when the musl target can be installed), and runs
# scripts/bench_load.py, which
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
# The container image's static musl build too, for its idle RSS (optional:
# needs the musl target and musl-tools).
if (rustup target list --installed | grep -q x86_64-unknown-linux-musl \
      || rustup target add x86_64-unknown-linux-musl) >/dev/null 2>&1 \
   && { command -v musl-gcc >/dev/null || apt-get install -y -qq musl-tools >/dev/null; }; then
  cargo build --release --locked --target x86_64-unknown-linux-musl --bin tcsas-gateway \
    || echo "static musl build failed; measuring the default build only" >&2
fi
exec python3 scripts/bench_load.py "$@"
