# Shared by compare.sh and profile.sh: start and stop each server as its own process, with
# its own configuration and data under $OUT/<server>/, and run outpost-bench against it.
# The caller sets OUT, ITERATIONS, TLS, THREADS, SRC_IPS, CERT_DIR, OUTPOST and BENCH.
#
# Every server runs with the same features on: message archiving (XEP-0313) of every
# one-to-one message and of every room, stream management (XEP-0198), multi-user chat
# (XEP-0045) at conference.$DOMAIN, offline storage. The relay (the ceiling) has no XMPP.

: "${EJ_MAM_DB:=sql}"                  # ejabberd's archive: sql (SQLite) or mnesia
: "${PROSODY_MAM_STORAGE:=internal}"    # Prosody's archive: internal (files) or sql (SQLite)

DOMAIN=bench.local
MUC_SERVICE=conference.$DOMAIN
PASSWORD=benchpass
declare -A PORT=([outpost]=15222 [prosody]=15322 [ejabberd]=15422 [relay]=15522)
# XMPP over WebSocket (RFC 7395) at /xmpp-websocket, over HTTPS; Outpost's HTTP API there too.
declare -A WS_PORT=([outpost]=15281 [prosody]=15381 [ejabberd]=15481)

# A self-signed certificate for $DOMAIN in $CERT_DIR (key.pem, cert.pem, both.pem), for
# Prosody and ejabberd (Outpost and the relay make their own).
make_cert() {
    mkdir -p "$CERT_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$DOMAIN" \
        -addext "subjectAltName=DNS:$DOMAIN" \
        -keyout "$CERT_DIR/key.pem" -out "$CERT_DIR/cert.pem" 2>/dev/null
    cat "$CERT_DIR/cert.pem" "$CERT_DIR/key.pem" >"$CERT_DIR/both.pem"
    chmod 644 "$CERT_DIR"/*.pem
}

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
https = ["127.0.0.1:${WS_PORT[outpost]}"]
http = []

[registration]
enabled = true

[upload]
enabled = false

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

# On by default; written out so the configuration says what was measured.
[archive]
enabled = true
retention_days = 365

[stream_management]
enabled = true

[muc]
enabled = true
subdomain = "conference"
create_rooms = "local"

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
    # The archives (users' and rooms') on Prosody's internal file storage, like everything
    # else, or (PROSODY_MAM_STORAGE=sql) in SQLite through LuaDBI (lua-dbi-sqlite3).
    local storage='storage = "internal"'
    if [[ $PROSODY_MAM_STORAGE == sql ]]; then
        storage='default_storage = "internal"
storage = { archive = "sql"; muc_log = "sql" }
sql = { driver = "SQLite3"; database = "prosody.sqlite" }'
    fi
    cat >"$dir/prosody.cfg.lua" <<EOF
-- Prosody for outpost-bench: loopback only, no rate limits, offline storage, message
-- archive (mod_mam, every message), stream management (mod_smacks) and MUC on.
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
https_ports = { ${WS_PORT[prosody]} }
https_interfaces = { "127.0.0.1" }
https_ssl = { certificate = "$CERT_DIR/cert.pem"; key = "$CERT_DIR/key.pem"; }
modules_enabled = {
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "register"; "offline";
    "mam"; "smacks"; "websocket";
}
modules_disabled = { "s2s"; "limits"; "c2s_limits"; "admin_telnet"; }
authentication = "internal_hashed"
default_iteration_count = $ITERATIONS
$storage
-- Archive every message (XEP-0313), kept a year as Outpost's retention_days = 365. Room
-- for a million archived messages per user (at the default, 10,000, Prosody would drop the
-- oldest 1 % and rewrite the user's archive file every 100 messages).
default_archive_policy = true
archive_expires_after = "1y"
storage_archive_item_limit = 1000000
allow_registration = true
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
-- No stanza rate limits or size quotas beyond the defaults (256 KiB stanzas).
ssl = { certificate = "$CERT_DIR/cert.pem"; key = "$CERT_DIR/key.pem"; }

VirtualHost "$DOMAIN"

-- Rooms: anyone local may create them, every room archived (mod_muc_mam), no limits.
Component "$MUC_SERVICE" "muc"
    modules_enabled = { "muc_mam" }
    muc_log_all_rooms = true
    muc_log_by_default = true
    muc_log_expires_after = "1y"
    restrict_room_creation = false
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
    # The archive's backend: SQLite (EJ_MAM_DB=sql), which ejabberd's own warning
    # recommends for mod_mam on small servers, or mnesia. mod_mam's mnesia table is a
    # disc-only bag keyed by user: each message costs O(messages the user has archived),
    # so storing slows down as archives grow (see BENCHMARKS.md). Everything else stays in
    # mnesia.
    local EJ_SQL_CONFIG=""
    if [[ $EJ_MAM_DB == sql ]]; then
        EJ_SQL_CONFIG="sql_type: sqlite
sql_database: $dir/ejabberd.sqlite
"
    fi
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
# ejabberd for outpost-bench: loopback only, no shapers, offline storage, message archive
# (mod_mam, every message; in $EJ_MAM_DB, everything else in mnesia), stream management
# and MUC on.
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
  - port: ${WS_PORT[ejabberd]}
    ip: "127.0.0.1"
    module: ejabberd_http
    tls: true
    backlog: 1024
    request_handlers:
      /xmpp-websocket: ejabberd_http_ws
${EJ_SQL_CONFIG}auth_method: internal
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
  mod_mam:
    db_type: $EJ_MAM_DB
    default: always
  mod_stream_mgmt: {}
  mod_muc:
    hosts:
      - $MUC_SERVICE
    access: all
    access_create: all
    access_persistent: all
    access_mam: all
    history_size: 20
    max_users: 1000
    max_users_presence: 1000
    max_user_conferences: 1000
    min_message_interval: 0
    min_presence_interval: 0
    default_room_options:
      mam: true
      max_users: 1000
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

# The ceiling: outpost-bench's relay (no XMPP), TLS from the first byte when TLS=1.
start_relay() {
    local dir=$OUT/relay
    mkdir -p "$dir"
    : >"$dir/relay.log"
    local tls=()
    [[ $TLS == 1 ]] && tls=(--tls)
    "$BENCH" --domain "$DOMAIN" "${tls[@]}" relay --listen "127.0.0.1:${PORT[relay]}" \
        >>"$dir/relay.log" 2>&1 &
    echo $! >"$dir/pid"
}

stop_relay() {
    local pid
    pid=$(cat "$OUT/relay/pid")
    kill -TERM "$pid" 2>/dev/null || true
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

# The relay pairs connections in accept order, so a probe connection would take a place:
# wait for the line it prints once it listens instead.
wait_relay() {
    for _ in $(seq 1 300); do
        grep -q '"relay":"listening"' "$OUT/relay/relay.log" 2>/dev/null && return 0
        sleep 0.1
    done
    die "the relay did not start in 30 s (see $OUT/relay/relay.log)"
}

start_server() {
    if [[ $1 == relay ]]; then
        start_relay
        wait_relay
        return
    fi
    "start_$1"
    wait_port "${PORT[$1]}"
    wait_port "${WS_PORT[$1]}"
    sleep 1
}

# XMPP over WebSocket at the server's WS_PORT (TLS from the first byte).
bench_ws() {
    local server=$1; shift
    PORT_OVERRIDE=${WS_PORT[$server]} bench "$server" --ws /xmpp-websocket "$@"
}

# The HTTP API (Outpost only): XMPP on its client port, HTTPS on WS_PORT.
bench_http() {
    local server=$1; shift
    bench "$server" --http-port "${WS_PORT[$server]}" "$@"
}

bench() {
    local server=$1; shift
    local tls=()
    [[ $TLS == 1 || -n ${PORT_OVERRIDE:-} ]] && tls=(--tls)
    [[ $server == relay ]] && tls+=(--raw)
    local src=()
    [[ -n $SRC_IPS ]] && src=(--src-ips "$SRC_IPS")
    "$BENCH" --port "${PORT_OVERRIDE:-${PORT[$server]}}" --domain "$DOMAIN" --password "$PASSWORD" \
        --pidfile "$OUT/$server/pid" --label "$server" --threads "$THREADS" \
        --out "${OUT_FILE:-$OUT/$server.jsonl}" "${tls[@]}" "${src[@]}" "$@" >/dev/null ||
        log "$server: $1 reported an error (see $OUT/$server.jsonl)"
}

