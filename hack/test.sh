#!/usr/bin/env bash
# The README's test command (and CI's, via .ci/run): set-up, then lint, type-check and the test suite.
# Every check runs even if an earlier one failed; the exit code is the first failure's.
# Extra arguments go to pytest, e.g. `hack/test.sh -x -k lifecycle` or `hack/test.sh tests/unit`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

bash hack/setup.sh || exit $?
export PATH="$PWD/.venv/bin:$PATH"  # tests and tools find kubectl/helm here

first_failure=0
check() {  # check NAME COMMAND...
    local name=$1 rc
    shift
    echo "== $name"
    "$@"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "== $name FAILED (exit $rc)"
        [ "$first_failure" -ne 0 ] || first_failure=$rc
    fi
    return 0
}

check ruff .venv/bin/ruff check operator tests benchmarks
check mypy .venv/bin/mypy

# The real control plane the end-to-end and Helm tests run on (built once per machine, then seconds).
# LVO_API=emulator runs them on the API emulator instead, without it.
if [ "${LVO_API:-real}" = real ]; then
    echo "== control plane (hack/cluster.sh up)"
    started=$SECONDS
    bash hack/cluster.sh up || exit $?
    echo "== control plane ready in $((SECONDS - started)) s"
    if [ "${LVO_CLUSTER_NODE:-1}" = 1 ]; then
        # The operator image the DaemonSet test runs on the node (built once per content hash, seconds after).
        echo "== operator image (hack/image.sh)"
        started=$SECONDS
        bash hack/image.sh >/dev/null || exit $?
        echo "== operator image ready in $((SECONDS - started)) s"
    fi
fi

# Default to the whole suite unless a test path was given.
paths=(tests)
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    if [ -e "${arg%%::*}" ]; then paths=(); break; fi
done

echo "== pytest"
# The slowest tests in every log: what CI's time goes to (its limit: under 20 minutes with builds cached).
.venv/bin/python -m pytest -q --durations=25 "${paths[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    # pytest's "no tests ran" is exit 5: never let an empty run pass for a green suite.
    echo "test.sh: pytest collected no tests (exit 5); this is a failure" >&2
fi
[ "$first_failure" -ne 0 ] || first_failure=$rc
exit "$first_failure"
