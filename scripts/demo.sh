#!/usr/bin/env bash
# End-to-end demo on one machine, no internet, no sshd: installs the connector,
# starts the reference relay (twistd incident-relay), registers a connector
# (ID + token, as the SaaS UI would show them), starts the connector with only
# those two, a local web server as the private destination, and fetches it
# through the tunnel with curl --socks5-hostname.  Cleans up after itself.
source "$(dirname "$0")/_common.sh"
need_debian curl
waitfor() {  # waitfor FILE PATTERN: up to 15 s for a log line
    for _ in $(seq 150); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1:"; cat "$1"; exit 1
}
ssh_port=$(freeport); api_port=$(freeport); web_port=$(freeport); metrics_port=$(freeport)

echo "== starting the reference relay: twistd -n incident-relay"
twistd -n --pidfile= incident-relay --data-dir "$work/relay" \
    --ssh-listen "tcp:$ssh_port:interface=127.0.0.1" --api-listen "tcp:$api_port:interface=127.0.0.1" \
    >"$work/relay.log" 2>&1 & pids+=($!)
waitfor "$work/relay.log" "api listening"

echo "== registering a connector: incident-relay add demo"
credentials=$(incident-relay --data-dir "$work/relay" add demo --json)
connector_id=$(echo "$credentials" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connector_id"])')
api_token=$(echo "$credentials" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_token"])')
echo "   connector ID $connector_id (the token stays in an environment variable)"

mkdir "$work/www" && echo "hello from the private network" > "$work/www/index.html"
python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 & pids+=($!)

echo "== starting the connector with only a connector ID and a token (as the hosted product documents it)"
INCIDENT_CONNECTOR_ID="$connector_id" INCIDENT_CONNECTOR_API_TOKEN="$api_token" connector-proxy \
    --api-url "http://127.0.0.1:$api_port" \
    --relay-address "127.0.0.1:$ssh_port" --state-dir "$work/state" \
    --forward-dest-allowlist "localhost:$web_port" \
    --metrics-listen "tcp:$metrics_port:interface=127.0.0.1" >"$work/connector.log" 2>&1 & pids+=($!)
waitfor "$work/connector.log" "Allocated port"
port=$(sed -n 's/.*Allocated port \([0-9]*\) for remote forward to socks.*/\1/p' "$work/connector.log" | tail -1)

echo "== the relay listens on 127.0.0.1:$port for this connector; the platform uses it as a SOCKS proxy"
echo "== curl --socks5-hostname 127.0.0.1:$port http://localhost:$web_port/"
curl -sS --fail --max-time 10 -w 'HTTP %{http_code}\n' --socks5-hostname "127.0.0.1:$port" "http://localhost:$web_port/"
echo "== the relay's test call (over its admin socket), for an allowed and a forbidden destination:"
for destination in "localhost:$web_port" "localhost:$metrics_port"; do
    echo "   incident-relay test $connector_id $destination: $(incident-relay --data-dir "$work/relay" test "$connector_id" "$destination")"
done
echo "== incident-relay list"
incident-relay --data-dir "$work/relay" list
echo "== connector log:"
cat "$work/connector.log"
