#!/usr/bin/env bash
# Validates deploy/ with real tools: systemd-analyze for the unit (any
# warning fails), kubernetes-validate (strict schemas) for the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null; then
  apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
binary="$PWD/target/debug/tcsas-gateway"
[ -x "$binary" ] || cargo build --quiet --bin tcsas-gateway
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The unit names the installed path; point it at the built binary so that
# verify can check ExecStart too.
sed "s#/usr/local/bin/tcsas-gateway#$binary#" deploy/systemd/tcsas-gateway.service > "$work/tcsas-gateway.service"
report=$(systemd-analyze verify "$work/tcsas-gateway.service" 2>&1) || { echo "$report"; exit 1; }
if [ -n "$report" ]; then
  echo "systemd-analyze verify reported problems:"; echo "$report"; exit 1
fi
echo "deploy/systemd/tcsas-gateway.service: systemd-analyze verify clean"

venv="target/deploy-venv"
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
"$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
echo "deploy/kubernetes: kubernetes-validate --strict clean"
