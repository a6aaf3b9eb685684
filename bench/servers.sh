# Shared by compare.sh and profile.sh: start and stop each server as its own process, with
# its own configuration and data under $OUT/<server>/, and run outpost-bench against it.
# The caller sets OUT, ITERATIONS, TLS, THREADS, SRC_IPS, CERT_DIR, OUTPOST and BENCH.

DOMAIN=bench.local
PASSWORD=benchpass
declare -A PORT=([outpost]=15222 [prosody]=15322 [ejabberd]=15422)

log() { printf '\n[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

start_outpost() {
    local dir=$OUT/outpost
    mkdir -p "$dir/data"
    cat >"$dir/outpost.toml" <<EOF
domains = ["$DOMAIN"]
data_dir = "$dir/data"

[listen]
c2s = ["127.0.0.1:${PORT[outpost]}"]
c2s_tls = ["127.0.0.1:$(( PORT[outpost] + 1 ))"]
proxy65 = []

[registration]
enabled = true

[auth]
scram_iterations = $ITERATIONS
allow_plaintext_without_tls = true

[limits]
read_rate_bytes_per_sec = 4000000000
read_burst_bytes = 4000000000
max_connections = 100000
offline_quota = 1000000
idle_timeout_secs = 7200
ping_interval_secs = 7000
login_failures_per_ip = 1000000
login_failures_per_account = 1000000

[log]
level = "warn"
EOF
    "$OUTPOST" serve --config "$dir/outpost.toml" >>"$dir/outpost.log" 2>&1 &
    echo $! >"$dir/pid"
}

stop_outpost() {
    local pid
    pid=$(cat "$OUT/outpost/pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
}

start_prosody() {
    local dir=$OUT/prosody
    mkdir -p "$dir/data"
    cat >"$dir/prosody.cfg.lua" <<EOF
-- Prosody for outpost-bench: loopback only, no rate limits, offline storage on.
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
plugin_paths = {}
daemonize = false
log = { warn = "$dir/prosody.log" }
network_backend = "epoll"
network_settings = { tcp_backlog = 1024 }
c2s_ports = { ${PORT[prosody]} }
c2s_interfaces = { "127.0.0.1" }
c2s_direct_tls_ports = {}
s2s_ports = {}
s2s_interfaces = {}
http_ports = {}
https_ports = {}
modules_enabled = {
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "register"; "offline";
}
modules_disabled = { "s2s"; "limits"; "c2s_limits"; "http"; "admin_telnet"; }
authentication = "internal_hashed"
default_iteration_count = $ITERATIONS
storage = "internal"
allow_registration = true
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
-- No stanza rate limits or size quotas beyond the defaults (256 KiB stanzas).
ssl = { certificate = "$CERT_DIR/cert.pem"; key = "$CERT_DIR/key.pem"; }

VirtualHost "$DOMAIN"
EOF
    chown -R prosody:prosody "$dir"
    setpriv --reuid prosody --regid prosody --init-groups \
        prosody --config "$dir/prosody.cfg.lua" >>"$dir/stdout.log" 2>&1 &
    echo $! >"$dir/pid"
}

stop_prosody() {
    local pid
    pid=$(cat "$OUT/prosody/pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
}

EJ_ARGS=()
# ejabberdctl as the ejabberd user without su, whose PAM session would reset the file
# descriptor limit to 1024; setpriv keeps ours.
ejctl() {
    HOME=/var/lib/ejabberd setpriv --reuid ejabberd --regid ejabberd --init-groups \
        ejabberdctl "${EJ_ARGS[@]}" "$@"
}

start_ejabberd() {
    local dir=$OUT/ejabberd
    mkdir -p "$dir/spool" "$dir/logs"
    cat >"$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=outpostbench@localhost
EJABBERD_PID_PATH=$dir/ejabberd.pid
EJABBERD_CONFIG_PATH=$dir/ejabberd.yml
ERL_MAX_PORTS=262144
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 ${EJ_EXTRA_ERL_OPTIONS:-}"
EJABBERD_BYPASS_WARNINGS=true
EOF
    : >"$dir/inetrc"
    cat >"$dir/ejabberd.yml" <<EOF
# ejabberd for outpost-bench: loopback only, no shapers, offline storage on.
hosts:
  - $DOMAIN
loglevel: warning
certfiles:
  - $CERT_DIR/both.pem
listen:
  - port: ${PORT[ejabberd]}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    backlog: 1024
    shaper: none
    access: c2s
    starttls: true
    starttls_required: false
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha
default_db: mnesia
registration_timeout: infinity
max_fsm_queue: 1000000
acl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: all
  c2s:
    allow: all
  register:
    allow: all
shaper_rules:
  max_user_sessions: 100
  max_user_offline_messages: 1000000
  c2s_shaper: none
modules:
  mod_disco: {}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_ping: {}
  mod_register:
    access: register
    ip_access: all
    welcome_message:
      subject: ""
      body: ""
  mod_roster: {}
EOF
    chown -R ejabberd:ejabberd "$dir"
    EJ_ARGS=(--config-dir "$dir" --config "$dir/ejabberd.yml" --ctl-config "$dir/ejabberdctl.cfg"
             --logs "$dir/logs" --spool "$dir/spool" --node outpostbench@localhost)
    ejctl start
    ejctl started
    for _ in $(seq 1 100); do
        [[ -s $dir/ejabberd.pid ]] && break
        sleep 0.1
    done
    cp "$dir/ejabberd.pid" "$dir/pid"
}

stop_ejabberd() {
    local pid
    pid=$(cat "$OUT/ejabberd/pid")
    ejctl stop >/dev/null || true
    ejctl stopped >/dev/null || true
    # Erlang's port mapper daemon, started by the node, serves no other node here.
    HOME=/var/lib/ejabberd setpriv --reuid ejabberd --regid ejabberd --init-groups \
        epmd -kill >/dev/null 2>&1 || true
    wait_gone "$pid"
}

wait_gone() {
    local pid=$1
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid did not stop in 20 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

wait_port() {
    local port=$1
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$port after 30 s"
}

start_server() {
    "start_$1"
    wait_port "${PORT[$1]}"
    sleep 1
}

bench() {
    local server=$1; shift
    local tls=()
    [[ $TLS == 1 ]] && tls=(--tls)
    local src=()
    [[ -n $SRC_IPS ]] && src=(--src-ips "$SRC_IPS")
    "$BENCH" --port "${PORT[$server]}" --domain "$DOMAIN" --password "$PASSWORD" \
        --pidfile "$OUT/$server/pid" --label "$server" --threads "$THREADS" \
        --out "${OUT_FILE:-$OUT/$server.jsonl}" "${tls[@]}" "${src[@]}" "$@" >/dev/null ||
        log "$server: $1 reported an error (see $OUT/$server.jsonl)"
}

