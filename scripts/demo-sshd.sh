#!/usr/bin/env bash
# Self-hosted relay demo: installs the connector, starts a
# throwaway OpenSSH sshd as the relay, a local HTTP server as the private
# destination, the connector, and fetches the page through the tunnel with
# curl --socks5-hostname.  Cleans up after itself.
source "$(dirname "$0")/_common.sh"
need_debian openssh-server openssh-client curl

relay_port=$(freeport); web_port=$(freeport); metrics_port=$(freeport)
ssh-keygen -q -t ed25519 -N "" -f "$work/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$work/connector_key"
cp "$work/connector_key.pub" "$work/authorized_keys"
echo "[127.0.0.1]:$relay_port $(cut -d' ' -f1,2 "$work/host_key.pub")" > "$work/known_hosts"
[ "$(id -u)" -ne 0 ] || mkdir -p /run/sshd
cat > "$work/sshd_config" <<CONF
Port $relay_port
ListenAddress 127.0.0.1
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
# The connector's account can hold a remote forward and nothing else (docs/relay.md).
AllowTcpForwarding remote
PermitOpen none
PermitTTY no
ForceCommand /bin/false
AllowAgentForwarding no
X11Forwarding no
CONF
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" & pids+=($!)

mkdir "$work/www" && echo "hello from the private network" > "$work/www/index.html"
python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 & pids+=($!)

echo "== starting: connector-proxy --relay-address 127.0.0.1:$relay_port ..."
: >"$work/connector.log"
connector-proxy \
    --relay-address "127.0.0.1:$relay_port" --relay-user "$(id -un)" \
    --identity-file "$work/connector_key" --known-hosts "$work/known_hosts" \
    --forward-dest-allowlist "localhost:$web_port" \
    --metrics-listen "tcp:$metrics_port:interface=127.0.0.1" >"$work/connector.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
    port=$(sed -n 's/.*Allocated port \([0-9]*\) for remote forward to socks.*/\1/p' "$work/connector.log" | tail -1)
    [ -n "$port" ] && break
    sleep 0.1
done
if [ -z "${port:-}" ]; then echo "the tunnel did not come up:"; cat "$work/connector.log"; exit 1; fi
echo "== the relay allocated port $port; the platform's side would now use it as a SOCKS proxy"
echo "== curl --socks5-hostname 127.0.0.1:$port http://localhost:$web_port/"
curl -sS --fail --max-time 10 -w 'HTTP %{http_code}\n' --socks5-hostname "127.0.0.1:$port" "http://localhost:$web_port/"
echo "== a destination not on the allowlist is refused (SOCKS reply 0x02):"
curl -sS --max-time 10 --socks5-hostname "127.0.0.1:$port" "http://localhost:$metrics_port/" 2>&1 || true
echo "== connector log:"
cat "$work/connector.log"
echo "== metrics (excerpt):"
curl -sS "http://127.0.0.1:$metrics_port/metrics" | grep -E '^incident_connector_(streams_total|tunnel_up|bytes_total)'
