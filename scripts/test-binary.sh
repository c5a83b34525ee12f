#!/usr/bin/env bash
# Build dist/connector-proxy and test it as a user would run it: copied out of
# the checkout, started from an empty directory as a non-root user with an
# empty environment (env -i: no PYTHONPATH, no HOME, no PATH), against the
# reference relay.  Checks: --version; the tunnel comes up over the relay's
# HTTPS certificate API (pyOpenSSL, service_identity, idna, cryptography);
# the platform trust store is consulted (a private CA is refused with the
# usual line, and trusted once SSL_CERT_FILE names it); bytes move through curl --socks5-hostname; a
# destination off the allowlist is refused; /metrics answers
# (prometheus_client); the reactor is the platform default; SIGTERM exits 0.
#
# Linux only (useradd, setpriv).  Needs python3 with the connector's test
# dependencies for the relay (pip install '.[test]'), PyInstaller, curl.
# Usage: scripts/test-binary.sh [--no-build]   (KEEP=1 keeps the work directory)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-python3}

started=$(date +%s)
if [ "${1:-}" != "--no-build" ]; then
    bash scripts/build-binary.sh
    echo "build took $(($(date +%s) - started)) s"
fi
[ -x dist/connector-proxy ] || { echo "FAIL no dist/connector-proxy" >&2; exit 1; }

work=$(mktemp -d /tmp/connector-binary.XXXXXX)
chmod 0755 "$work"
pids=()
createdUser=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "$createdUser" ] && userdel "$createdUser" 2>/dev/null
    if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { echo "FAIL $*" >&2; for log in "$work"/*.log; do echo "--- $log" >&2; tail -n 30 "$log" >&2; done; exit 1; }
ok() { echo "ok   $*"; }
freeport() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# waitfor SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or fail after SECONDS.
waitfor() {
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what"
        sleep 0.2
    done
}

# A non-root user that cannot read the checkout's Python (root's pyenv, site-packages).
if [ "$(id -u)" -eq 0 ]; then
    user=connector-binary-test
    if ! id "$user" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
        createdUser=$user
    fi
    # setpriv execs (no child process in between), so signals reach the binary.
    asUser=(setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups --)
else
    user=$(id -un)
    asUser=()
fi

# The executable alone, outside the checkout; an empty directory to run in.
install -d -m 0755 "$work/bin"
install -m 0755 dist/connector-proxy "$work/bin/connector-proxy"
binary=$work/bin/connector-proxy
install -d -m 0700 -o "$user" "$work/run"

version=$(cd "$work/run" && "${asUser[@]}" env -i "$binary" --version) || fail "--version failed"
expected="incident-connector $("$python" -c 'import incident_connector; print(incident_connector.__version__)')"
[ "$version" = "$expected" ] || fail "--version printed '$version', expected '$expected'"
ok "--version: $version"

# The reference relay, its API over HTTPS with a private CA (certificate for localhost).
install -d -m 0755 "$work/tls"
PYTHONPATH=$repo "$python" -c "
import sys
from pathlib import Path
from tests.integration.test_token import makeTLS
makeTLS(Path(sys.argv[1]))" "$work/tls"
chmod 0644 "$work"/tls/*
sshPort=$(freeport)
apiPort=$(freeport)
relay() { PYTHONPATH=$repo "$python" -c "from incident_connector.relay.cli import run; run()" --data-dir "$work/relay" "$@"; }
PYTHONPATH=$repo "$python" -c "from twisted.scripts.twistd import run; run()" -n --pidfile= incident-relay \
    --data-dir "$work/relay" --ssh-listen "tcp:$sshPort:interface=127.0.0.1" \
    --api-listen "ssl:$apiPort:interface=127.0.0.1:privateKey=$work/tls/server.key:certKey=$work/tls/server.pem" \
    >"$work/relay.log" 2>&1 &
pids+=($!)
waitfor 20 "the reference relay" bash -c "echo >/dev/tcp/127.0.0.1/$sshPort && echo >/dev/tcp/127.0.0.1/$apiPort"
registration=$(relay add binary --json)
connectorId=$("$python" -c 'import json,sys; print(json.load(sys.stdin)["connector_id"])' <<<"$registration")
token=$("$python" -c 'import json,sys; print(json.load(sys.stdin)["api_token"])' <<<"$registration")

# Destinations: a web server that is allowed, another that is not.
install -d -m 0755 "$work/www"
echo "hello from the private network" >"$work/www/hello.txt"
webPort=$(freeport)
otherPort=$(freeport)
"$python" -m http.server --bind 127.0.0.1 --directory "$work/www" "$webPort" >"$work/web.log" 2>&1 &
pids+=($!)
"$python" -m http.server --bind 127.0.0.1 --directory "$work/www" "$otherPort" >"$work/other.log" 2>&1 &
pids+=($!)
waitfor 10 "the web servers" bash -c "echo >/dev/tcp/127.0.0.1/$webPort && echo >/dev/tcp/127.0.0.1/$otherPort"

metricsPort=$(freeport)
# run LOG EXTRA-VARIABLE...: start the binary as the user, environment from nothing.
run() {
    local log=$1
    shift
    (cd "$work/run" && exec "${asUser[@]}" env -i \
        "INCIDENT_CONNECTOR_ID=$connectorId" "INCIDENT_CONNECTOR_API_TOKEN=$token" \
        "INCIDENT_CONNECTOR_RELAY_ADDRESS=127.0.0.1:$sshPort" "INCIDENT_CONNECTOR_API_URL=https://localhost:$apiPort" \
        "INCIDENT_CONNECTOR_STATE_DIR=$work/run/state" "$@" \
        "$binary" "--forward-dest-allowlist=localhost:$webPort") >"$work/$log" 2>&1 &
    binaryPid=$!
    pids+=($binaryPid)
}

# Without the private CA the system trust store decides, and refuses it.
run untrusted.log "INCIDENT_CONNECTOR_METRICS_LISTEN=tcp:$(freeport):interface=127.0.0.1"
waitfor 30 "the untrusted-certificate line" grep -q "the server certificate is not trusted" "$work/untrusted.log"
kill -TERM "$binaryPid"
wait "$binaryPid" || fail "exit status $? after SIGTERM (untrusted run)"
ok "a private CA is not trusted without --api-ca-file"
# OpenSSL's default verify paths are in use: SSL_CERT_FILE naming the CA makes it trusted.
run trusted.log "SSL_CERT_FILE=$work/tls/ca.pem" "INCIDENT_CONNECTOR_METRICS_LISTEN=tcp:$(freeport):interface=127.0.0.1"
waitfor 30 "Allocated port (SSL_CERT_FILE)" grep -q "Allocated port" "$work/trusted.log"
kill -TERM "$binaryPid"
wait "$binaryPid" || fail "exit status $? after SIGTERM (SSL_CERT_FILE run)"
ok "the platform trust store (OpenSSL default paths, SSL_CERT_FILE) is consulted"

run binary.log "INCIDENT_CONNECTOR_API_CA_FILE=$work/tls/ca.pem" \
    "INCIDENT_CONNECTOR_METRICS_LISTEN=tcp:$metricsPort:interface=127.0.0.1"
waitfor 30 "Allocated port" grep -q "Allocated port [0-9]* for remote forward to socks" "$work/binary.log"
port=$(sed -n 's/.*Allocated port \([0-9]*\) for remote forward to socks.*/\1/p' "$work/binary.log" | head -n 1)
ok "Allocated port $port for remote forward to socks (certificate over HTTPS from the relay)"
grep -q "connector-proxy .* on twisted\.internet\.epollreactor\.EPollReactor" "$work/binary.log" ||
    fail "not on the epoll reactor"
ok "reactor: $(sed -n 's/.*connector-proxy [^ ]* on \([^ ]*\).*/\1/p' "$work/binary.log")"
relay list | grep -Eq "$connectorId +binary +online" || fail "the relay does not list the connector online"
ok "the relay lists it online"

body=$(curl -sS --max-time 10 --socks5-hostname "127.0.0.1:$port" "http://localhost:$webPort/hello.txt") ||
    fail "curl through the tunnel"
[ "$body" = "hello from the private network" ] || fail "curl got '$body'"
ok "curl --socks5-hostname through the tunnel: $body"
if curl -sS --max-time 10 --socks5-hostname "127.0.0.1:$port" "http://127.0.0.1:$otherPort/hello.txt" \
    >/dev/null 2>"$work/denied.err"; then
    fail "a destination off the allowlist was reached"
fi
grep -q "stream 127.0.0.1:$otherPort denied" "$work/binary.log" || fail "no 'denied' line for 127.0.0.1:$otherPort"
ok "127.0.0.1:$otherPort (off the allowlist) refused: $(head -n 1 "$work/denied.err")"

metrics=$(curl -sS --max-time 10 "http://127.0.0.1:$metricsPort/metrics") || fail "no /metrics"
grep -q '^incident_connector_streams_total{result="ok"} 1.0' <<<"$metrics" || fail "/metrics lacks the ok stream"
ok "/metrics counts the streams"

grep -q "$token" "$work/binary.log" && fail "the token is in the log"
grep -q "Traceback" "$work"/*.log && fail "a traceback in a log"
kill -TERM "$binaryPid"
status=0
wait "$binaryPid" || status=$?
[ "$status" -eq 0 ] || fail "exit status $status after SIGTERM"
ok "SIGTERM: exit status 0"
leftovers=$(find "$work/run" -mindepth 1 -not -path "$work/run/state*")
[ -z "$leftovers" ] || fail "wrote outside its state directory: $leftovers"
ok "ran as $user from an empty directory with env -i; wrote only $work/run/state"
echo "binary test passed in $(($(date +%s) - started)) s"
