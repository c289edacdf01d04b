#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (Debian's redis-server; Tencent Cloud's official Python SDK, in a venv
# under target/), then runs
# the format and lint checks, runs every test, and validates deploy/ with
# systemd-analyze and kubernetes-validate.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fleet-mode tests start their own redis-server processes on random ports
# (one with TLS, its certificates made by openssl).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

sdk_venv="target/sdk-venv"
if ! "$sdk_venv/bin/python" -c 'import tencentcloud.tcsas.v20250106' 2>/dev/null; then
  echo "installing tencentcloud-sdk-python-intl-en into $sdk_venv"
  python3 -m venv "$sdk_venv"
  "$sdk_venv/bin/pip" install --quiet --disable-pip-version-check 'tencentcloud-sdk-python-intl-en==3.1.193'
fi
export TCSAS_SDK_PYTHON="$PWD/$sdk_venv/bin/python"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
# The benches are not run in CI, only built, so that they never rot (without
# optimisation or LTO here: this checks that they compile, it measures
# nothing; 1.8 minutes instead of 4.5 on 2 cores).
CARGO_PROFILE_BENCH_OPT_LEVEL=0 CARGO_PROFILE_BENCH_DEBUG=false CARGO_PROFILE_BENCH_LTO=false \
  CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench --locked --no-run
./scripts/validate-deploy.sh
