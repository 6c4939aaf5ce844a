#!/usr/bin/env bash
# Run the unit and end-to-end tests on the oldest and the newest supported
# stacks: Python 3.10 with Django 4.2, and Python 3.12 with Django 6.0.
# Each stack gets its own virtualenv under .venv-compat/. A Python version
# that is not installed is skipped with a message, unless CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local version=$1 candidate
    for candidate in "python$version" /root/.pyenv/versions/"$version".*/bin/python /usr/bin/python"$version"; do
        if "$candidate" -c 'import sys' >/dev/null 2>&1; then
            command -v "$candidate" || echo "$candidate"
            return 0
        fi
    done
    return 1
}

status=0
for stack in "3.10|django>=4.2,<5.0" "3.12|django>=6.0,<6.1"; do
    version=${stack%%|*}
    django=${stack#*|}
    if ! python=$(find_python "$version"); then
        if [ "${CI:-}" = true ]; then
            echo "Python $version is not installed; it is needed for the compatibility tests." >&2
            status=1
        else
            echo "Skipping Python $version: not installed."
        fi
        continue
    fi

    venv=".venv-compat/py$version"
    echo "== Python $version ($python) with $django"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e '.[test]' "$django"
    # The multiprocess and storm suites exercise the servers, not the
    # Python or Django version, and run once in `make test`.
    "$venv/bin/python" -m pytest -q -p no:cacheprovider --ignore=tests/multiprocess --ignore=tests/storm || status=1
done
exit $status
