#!/usr/bin/env bash
# Every check CI runs: lint, types, import contracts, then the whole test suite (unit and
# integration).
# Starts Mosquitto and PostgreSQL on loopback when they are not answering.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$root"

answers() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

if [ -z "${SPARSETEL_TEST_BROKER:-}" ] && ! answers 1883; then
    echo "test.sh: Mosquitto is not answering on 127.0.0.1:1883, starting it" >&2
    mosquitto -d -c /etc/mosquitto/mosquitto.conf || echo "test.sh: could not start mosquitto" >&2
    for _ in $(seq 50); do answers 1883 && break; sleep 0.1; done
fi
if [ -z "${SPARSETEL_TEST_POSTGRES:-}" ] && ! answers 5432; then
    echo "test.sh: PostgreSQL is not answering on 127.0.0.1:5432, starting it" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start \
        || echo "test.sh: could not start PostgreSQL" >&2
    for _ in $(seq 50); do answers 5432 && break; sleep 0.1; done
fi

# The dashboard's browser test drives Debian's Chromium and its driver (marker `browser`).
if [ -z "${SPARSETEL_NO_BROWSER_INSTALL:-}" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    echo "test.sh: installing Debian's chromium and chromium-driver for the browser test" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    { $sudo apt-get install -y -q chromium chromium-driver >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium chromium-driver >/dev/null; }; } \
        || echo "test.sh: could not install Chromium; the browser test will say so" >&2
fi

echo "== ruff" >&2
ruff check .
ruff format --check .
echo "== mypy" >&2
mypy
echo "== import contracts" >&2
lint-imports --no-cache
echo "== pytest" >&2
pytest -q -p no:cacheprovider "$@"
