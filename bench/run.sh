#!/usr/bin/env bash
# The benchmark suite (`make bench`): builds the release binaries, installs
# HAProxy when missing, runs every scenario of callrelay-load against the
# relay, straight to an in-process sink ("direct") and through HAProxy in
# mode tcp ("pipe"), keeps the raw JSON in bench/out/ and writes
# bench/RESULTS.md with bench/report.py.
#
# Every process it starts is stopped on exit, failure or interrupt. A tool
# run that exits non-zero is recorded as failed, the suite goes on, and it
# exits non-zero at the end.
#
# BENCH_ONLY="tls calls" runs only the named scenario groups (flood, paced,
# flood64k, slow, calls, idle, tls, cluster) and writes its report to
# bench/out/RESULTS.md, leaving bench/RESULTS.md alone.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

OUT=bench/out
LOAD=./target/release/callrelay-load
RELAY=./target/release/callrelay
# Relay and HAProxy runs of the 1 KiB flood and paced audio scenarios (the
# targets) are repeated this many times and the report takes the median: on
# two cores shared by the tool and the server, one run's CPU per GiB can be
# off by a factor of two (3 runs were too few: the 1-pair TLS flood's median
# moved from 1.02 to 0.69 of HAProxy's between two 3- and 5-run suites).
REPEAT=${BENCH_REPEAT:-5}
[[ "$REPEAT" =~ ^[1-9]$ ]] || { echo "BENCH_REPEAT must be 1 to 9" >&2; exit 2; }
# Longest one tool run may take (the tool bounds itself; this is a backstop).
RUN_TIMEOUT=120
# Options of every calls and media run (idle has no warmup). Media also gets
# --drain 5 (default 2): in flat-out runs with many streams one turn of the
# tool's loop can outlast 2 s, and frames still in flight when the drain
# ends are counted as lost; the drain ends as soon as everything arrived.
COMMON=(--duration 5 --warmup 1 --quiet --json)
MEDIA=(--duration 5 --warmup 1 --drain 5 --quiet --json)
IDLE_COMMON=(--duration 5 --quiet --json)

# Other work may share this machine: each run records how much CPU the rest
# of the machine used meanwhile, and BENCH_NICE=-10 (root) runs the
# benchmark processes at a higher priority (default 0: normal priority).
BENCH_NICE=${BENCH_NICE:-0}
NICE=()
if [[ "$BENCH_NICE" != 0 && "$(nice -n "$BENCH_NICE" nice 2>/dev/null)" == "$((BENCH_NICE + $(nice)))" ]]; then
    NICE=(nice -n "$BENCH_NICE")
fi
HZ=$(getconf CLK_TCK)

SCENARIOS="flood paced flood64k slow calls idle tls cluster"
ONLY=${BENCH_ONLY:-}
for name in $ONLY; do
    [[ " $SCENARIOS " == *" $name "* ]] || { echo "BENCH_ONLY: unknown scenario $name (one of: $SCENARIOS)" >&2; exit 2; }
done
want() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }

SUITE_START=$(date +%s.%N)
RELAY_PID=""
RELAY_PORT=""
HAPROXY_PID=""
FAILED=0

say() { echo "[bench] $*" >&2; }
die() {
    echo "[bench] FATAL: $*" >&2
    exit 1
}

stop_pid() { # PID: TERM, wait up to 5 s, then KILL; always reaped.
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$RELAY_PID"
    stop_pid "$HAPROXY_PID"
    RELAY_PID=""
    HAPROXY_PID=""
    exit "$status"
}
trap cleanup EXIT
trap 'echo "[bench] FATAL: line $LINENO failed (status $?): $BASH_COMMAND" >&2' ERR
trap 'say "interrupted"; exit 130' INT TERM

# The command log: every command line the suite runs, as a script one can
# paste (the server PIDs are the shell variables set by the start lines).
COMMANDS="$OUT/commands.sh"
record() { printf '%s\n' "$*" >>"$COMMANDS"; }
quote() { # the arguments as one shell-quoted line
    local out="" arg
    for arg in "$@"; do out+="$(printf '%q' "$arg") "; done
    printf '%s' "${out% }"
}

free_ports() { # N: N distinct free TCP ports on 127.0.0.1, one per line
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

machine_ticks() { # busy CPU ticks of the whole machine: user nice system irq softirq steal
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
children_ticks() { # CPU ticks of this shell's finished children (the tool runs)
    awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"
}
process_ticks() { # PID: its CPU ticks so far (0 if none or gone)
    [[ -n "$1" ]] && awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

wait_listening() { # PORT PID: wait (at most 10 s) until PORT listens on 127.0.0.1 and PID lives
    local port=$1 pid=$2 hex i
    hex=$(printf '%04X' "$port")
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if awk -v want="0100007F:$hex" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

start_relay() { # extra relay options...: a fresh relay on a fresh port (3 tries: a port can be taken meanwhile)
    stop_relay
    local try cmd
    for try in 1 2 3; do
        RELAY_PORT=$(free_ports 1)
        cmd=("${NICE[@]}" "$RELAY" --listen "127.0.0.1:$RELAY_PORT" "$@")
        record "RUST_LOG=warn $(quote "${cmd[@]}") 2>>$OUT/relay.log & RELAY_PID=\$!"
        RUST_LOG=warn "${cmd[@]}" 2>>"$OUT/relay.log" &
        RELAY_PID=$!
        if wait_listening "$RELAY_PORT" "$RELAY_PID"; then
            record "sleep 0.5 # run.sh waits until 127.0.0.1:$RELAY_PORT listens"
            say "relay pid $RELAY_PID on 127.0.0.1:$RELAY_PORT $*"
            return 0
        fi
        stop_pid "$RELAY_PID"
        RELAY_PID=""
    done
    die "the relay did not start listening (3 tries; see $OUT/relay.log)"
}

stop_relay() {
    if [[ -n "$RELAY_PID" ]]; then
        record "kill \$RELAY_PID; wait \$RELAY_PID"
        stop_pid "$RELAY_PID"
        RELAY_PID=""
    fi
}

# run_load ID SERVER ARGS...: one tool run; SERVER is relay, haproxy or none
# (whose PID --server-pid gets). Output: $OUT/ID.json and $OUT/ID.err; one
# line in $OUT/manifest.tsv: id, exit status, seconds, server alive after,
# CPU seconds of the machine, the tool, the server and everything else
# during the run, and the command.
run_load() {
    local id=$1 server=$2
    shift 2
    local args=("$@") pid_args=() pid_text="" pid=""
    case "$server" in
    relay) pid=$RELAY_PID pid_text=' --server-pid $RELAY_PID' ;;
    haproxy) pid=$HAPROXY_PID pid_text=' --server-pid $HAPROXY_PID' ;;
    none) ;;
    *) die "run_load: unknown server $server" ;;
    esac
    [[ -n "$pid" ]] && pid_args=(--server-pid "$pid")
    local line
    line="$(quote "${NICE[@]}" "$LOAD" "${args[@]}")$pid_text"
    record "$line > $OUT/$id.json"
    local started rc=0 ended alive=yes m0 c0 s0 m1 c1 s1
    m0=$(machine_ticks) c0=$(children_ticks) s0=$(process_ticks "$pid")
    started=$(date +%s.%N)
    timeout --foreground --kill-after=5 "$RUN_TIMEOUT" "${NICE[@]}" "$LOAD" "${args[@]}" "${pid_args[@]}" >"$OUT/$id.json" 2>"$OUT/$id.err" || rc=$?
    ended=$(date +%s.%N)
    if [[ "$rc" -eq 130 || "$rc" -eq 143 ]]; then # the tool got SIGINT/SIGTERM: Ctrl-C
        say "interrupted during $id"
        exit "$rc"
    fi
    s1=$(process_ticks "$pid") c1=$(children_ticks) m1=$(machine_ticks)
    local busy tool srv other
    busy=$(awk -v a="$m0" -v b="$m1" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }')
    tool=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }')
    srv=$(awk -v a="$s0" -v b="$s1" -v hz="$HZ" 'BEGIN { d = b - a; if (d < 0) d = 0; printf "%.2f", d / hz }')
    other=$(awk -v m="$busy" -v t="$tool" -v s="$srv" 'BEGIN { o = m - t - s; if (o < 0) o = 0; printf "%.2f", o }')
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
        alive=no
    fi
    local seconds
    seconds=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$rc" "$seconds" "$alive" "$busy" "$tool" "$srv" "$other" "$line" >>"$OUT/manifest.tsv"
    if [[ "$rc" -ne 0 || "$alive" != yes ]]; then
        FAILED=$((FAILED + 1))
        say "FAILED: $id (exit $rc, server alive: $alive, ${seconds}s): $(head -c 300 "$OUT/$id.err")"
    else
        say "ok: $id (${seconds}s; CPU s: tool $tool, server $srv, others $other)"
    fi
    if [[ "$alive" != yes && "$server" == relay ]]; then
        RELAY_PID="" # gone; the next group starts a fresh one
    fi
    if [[ "$alive" != yes && "$server" == haproxy ]]; then
        start_haproxy
    fi
}

start_haproxy() {
    stop_pid "$HAPROXY_PID"
    HAPROXY_PID=""
    local cmd=("${NICE[@]}" haproxy -db -f "$OUT/haproxy.cfg")
    record "$(quote "${cmd[@]}") 2>>$OUT/haproxy.log & HAPROXY_PID=\$!"
    "${cmd[@]}" 2>>"$OUT/haproxy.log" &
    HAPROXY_PID=$!
    wait_listening "$PIPE_PORT" "$HAPROXY_PID" || die "HAProxy did not start listening on 127.0.0.1:$PIPE_PORT (see $OUT/haproxy.log)"
    record "sleep 0.5 # run.sh waits until 127.0.0.1:$PIPE_PORT listens"
    say "haproxy pid $HAPROXY_PID on 127.0.0.1:$PIPE_PORT -> 127.0.0.1:$SINK_PORT"
}

# ---------------------------------------------------------------- set-up

rm -rf "$OUT"
mkdir -p "$OUT"
: >"$OUT/manifest.tsv"
{
    echo "# The commands of the last \`make bench\` (bench/run.sh), in order, from the repository root."
    echo "# \$RELAY_PID and \$HAPROXY_PID are the servers started by the lines before them."
} >"$COMMANDS"

say "building (cargo build --release)"
record "cargo build --release"
cargo build --release

# ensure_package COMMAND PACKAGE: installs the Debian PACKAGE when COMMAND is missing.
ensure_package() {
    local command=$1 package=$2
    command -v "$command" >/dev/null 2>&1 && return 0
    say "$command is missing: installing $package with apt-get"
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "$package is not installed and this is not root (no sudo): install $package by hand"
        SUDO=(sudo)
    fi
    record "${SUDO[*]:+${SUDO[*]} }apt-get update && ${SUDO[*]:+${SUDO[*]} }env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $package"
    "${SUDO[@]}" apt-get update || die "apt-get update failed: cannot install $package"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" ||
        die "apt-get install $package failed"
}
ensure_package haproxy haproxy
# The charts of the report (bench/charts.py).
if ! python3 -c "import matplotlib" 2>/dev/null; then
    say "matplotlib is missing: installing it from PyPI"
    record "python3 -m pip install matplotlib"
    python3 -m pip install --quiet --disable-pip-version-check matplotlib || die "pip install matplotlib failed"
fi
if want cluster; then
    ensure_package redis-server redis-server
fi

# Both the relay and this tool hold one descriptor per connection (idle: 15 000).
ulimit -n 20000 2>/dev/null || true
record "ulimit -n $(ulimit -n)"

# The machine, for the report.
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel: $(uname -srm)"
    echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "rustc: $(rustc --version)"
    echo "haproxy: $(haproxy -v 2>&1 | head -n 1)"
    echo "open files limit: $(ulimit -n)"
    echo "nice: ${NICE[*]:-none}"
    echo "repeat: $REPEAT"
    echo "only: ${ONLY:-all}"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([[ -n "$(git --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]] && echo ' (with uncommitted changes)')"
} >"$OUT/machine.txt"
sed 's/^/[bench]   /' "$OUT/machine.txt" >&2

mapfile -t PORTS < <(free_ports 4)
PIPE_PORT=${PORTS[0]}
SINK_PORT=${PORTS[1]}
TLS_PIPE_PORT=${PORTS[2]}
TLS_SINK_PORT=${PORTS[3]}
echo "pipe_port: $PIPE_PORT" >>"$OUT/machine.txt"
echo "sink_port: $SINK_PORT" >>"$OUT/machine.txt"
echo "tls_pipe_port: $TLS_PIPE_PORT" >>"$OUT/machine.txt"
echo "tls_sink_port: $TLS_SINK_PORT" >>"$OUT/machine.txt"

# Throwaway certificates for the TLS scenario: a CA, and P-256 certificates
# for 127.0.0.1 signed by it for the relay, HAProxy's frontend (a PEM bundle
# of certificate and key, as `crt` wants it) and the tool's sink.
TLS_DIR=$OUT/tls
mkdir -p "$TLS_DIR"
command -v openssl >/dev/null 2>&1 || die "openssl is missing (apt-get install openssl): the TLS scenario needs it"
tls_openssl() { openssl "$@" >>"$TLS_DIR/openssl.log" 2>&1 || die "openssl $1 failed (see $TLS_DIR/openssl.log)"; }
tls_openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" -days 2 -subj "/CN=callrelay bench CA"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLS_DIR/ext.cnf"
for name in relay haproxy sink; do
    tls_openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" -subj "/CN=127.0.0.1"
    tls_openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -out "$TLS_DIR/$name.pem" -days 2 -extfile "$TLS_DIR/ext.cnf"
done
cat "$TLS_DIR/haproxy.pem" "$TLS_DIR/haproxy.key" >"$TLS_DIR/haproxy-bundle.pem"
record "# bench/out/tls/: a throwaway CA and P-256 certificates for 127.0.0.1 made with openssl (see run.sh)"
echo "tls: $(openssl version 2>&1 | head -n 1); P-256 ECDSA certificates" >>"$OUT/machine.txt"

# HAProxy as a plain byte pipe: mode tcp, no splicing, one thread (like the
# relay), no logging, long timeouts, no health checks. maxconn 9000: each
# connection takes two descriptors and HAProxy refuses to start when it
# cannot raise its limit to 2 x maxconn + a few (20000 is the most a process
# gets here); the pipe runs need at most 1000.
cat >"$OUT/haproxy.cfg" <<EOF
global
    nosplice
    maxconn 9000
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend pipe
    bind 127.0.0.1:$PIPE_PORT
    default_backend sink

backend sink
    server sink 127.0.0.1:$SINK_PORT

# The TLS scenario: TLS on both sides, terminated and made again (the
# client's TLS ends here; a new TLS connection goes to the tool's sink,
# whose certificate is not checked).
frontend tlspipe
    bind 127.0.0.1:$TLS_PIPE_PORT ssl crt $TLS_DIR/haproxy-bundle.pem
    default_backend tlssink

backend tlssink
    server sink 127.0.0.1:$TLS_SINK_PORT ssl verify none
EOF
haproxy -c -q -f "$OUT/haproxy.cfg" || die "haproxy rejects $OUT/haproxy.cfg"
start_haproxy

PIPE=(--target pipe --addr "127.0.0.1:$PIPE_PORT" --sink "127.0.0.1:$SINK_PORT")
TLS_PIPE=(--target pipe --addr "127.0.0.1:$TLS_PIPE_PORT" --sink "127.0.0.1:$TLS_SINK_PORT"
    --tls-ca "$TLS_DIR/ca.pem" --sink-cert "$TLS_DIR/sink.pem" --sink-key "$TLS_DIR/sink.key")

# ---------------------------------------------------------------- scenarios

# media_set ID REPEATS ARGS...: the same media run on a fresh relay, straight
# to the tool's sink and through HAProxy. The relay and HAProxy runs are
# repeated REPEATS times, interleaved (ID-relay-rN, ID-pipe-rN; the report
# takes the median run), the direct run once (ID-direct).
media_set() {
    local id=$1 repeats=$2 r
    shift 2
    start_relay
    for ((r = 1; r <= repeats; r++)); do
        [[ -n "$RELAY_PID" ]] || start_relay # the last run's relay died
        run_load "$id-relay-r$r" relay "$@" --target relay --addr "127.0.0.1:$RELAY_PORT"
        if ((r == 1)); then
            run_load "$id-direct" none "$@" --target direct
        fi
        run_load "$id-pipe-r$r" haproxy "$@" "${PIPE[@]}"
    done
}

# 1 KiB frames flat out, 1 and 100 pairs, seed and framed (target a).
if want flood; then
    for framing in seed framed; do
        for pairs in 1 100; do
            media_set "flood1k-$framing-p$pairs" "$REPEAT" media --pairs "$pairs" --size 1024 --framing "$framing" "${MEDIA[@]}"
        done
    done
fi

# 160 B at 50 frames/s per stream, 1000 pairs: 50 000 audio frames/s (target b).
if want paced; then
    media_set paced160-framed-p1000 "$REPEAT" media --pairs 1000 --size 160 --rate 50 --framing framed "${MEDIA[@]}"
fi

# 64 KiB frames flat out, 10 pairs: video-sized frames.
if want flood64k; then
    media_set flood64k-framed-p10 1 media --pairs 10 --size 65536 --framing framed "${MEDIA[@]}"
fi

# The 1 KiB flood over TLS (issue 10), framed, 1 and 100 pairs: the relay
# with --tls-cert/--tls-key and TLS clients (ID-relay-rN), the same relay
# process with plain clients (ID-plain-rN: the relay takes both on one port),
# and HAProxy bridging TLS on both sides to the tool's TLS sink
# (ID-pipe-rN), interleaved, REPEAT times each.
if want tls; then
    for pairs in 1 100; do
        id="tls1k-framed-p$pairs"
        TLS_MEDIA=(media --pairs "$pairs" --size 1024 --framing framed "${MEDIA[@]}")
        start_relay --tls-cert "$TLS_DIR/relay.pem" --tls-key "$TLS_DIR/relay.key"
        for ((r = 1; r <= REPEAT; r++)); do
            [[ -n "$RELAY_PID" ]] || start_relay --tls-cert "$TLS_DIR/relay.pem" --tls-key "$TLS_DIR/relay.key"
            run_load "$id-relay-r$r" relay "${TLS_MEDIA[@]}" --target relay --addr "127.0.0.1:$RELAY_PORT" --tls-ca "$TLS_DIR/ca.pem"
            [[ -n "$RELAY_PID" ]] || start_relay --tls-cert "$TLS_DIR/relay.pem" --tls-key "$TLS_DIR/relay.key"
            run_load "$id-plain-r$r" relay "${TLS_MEDIA[@]}" --target relay --addr "127.0.0.1:$RELAY_PORT"
            run_load "$id-pipe-r$r" haproxy "${TLS_MEDIA[@]}" "${TLS_PIPE[@]}"
        done
    done
fi

# A slow receiver (PROTOCOL.md 8.2): 1200 B at 100 frames/s to a receiver
# that reads 60 KB/s through a 4 KiB receive buffer, 20 s, relay and
# HAProxy side by side. Midway, `ss -tmi` records the kernel's unsent backlog
# (notsent) on the socket towards the receiver: small for the relay
# (TCP_NOTSENT_LOWAT), growing for the byte pipe.
if want slow; then
    SLOW=(media --pairs 1 --size 1200 --rate 100 --rx-rate 60000 --rcvbuf 4096 --slice 5
        --duration 20 --warmup 1 --drain 5 --quiet --json)
    SS_PIDS=()
    ss_midway() { # FILE FILTER: `ss -tmi` of the matching sockets 10 s from now, in the background
        record "(sleep 10; ss -tmi state established '$2') > $1 &"
        (sleep 10; ss -tmi state established "$2" >"$1" 2>&1) &
        SS_PIDS+=($!)
    }
    start_relay
    ss_midway "$OUT/slow-relay-ss.txt" "( sport = :$RELAY_PORT )"
    run_load slow-relay relay "${SLOW[@]}" --target relay --addr "127.0.0.1:$RELAY_PORT"
    ss_midway "$OUT/slow-pipe-ss.txt" "( dport = :$SINK_PORT )"
    run_load slow-pipe haproxy "${SLOW[@]}" "${PIPE[@]}"
    wait "${SS_PIDS[@]}" # only these: HAProxy runs in the background too
fi

# Call set-up and tear-down rate.
if want calls; then
    start_relay
    run_load "calls-framed-p10-relay" relay calls --pairs 10 --addr "127.0.0.1:$RELAY_PORT" "${COMMON[@]}"
    # The cost of verifying a token: one registration per call (--reconnect),
    # bare ids and tokens side by side on one relay in --auth optional mode
    # (which verifies tokens and takes bare ids as they are), interleaved.
    (umask 077 && printf 'bench %s\n' "$(head -c 32 /dev/urandom | base64 | tr -d '=+/')" >"$OUT/auth-secret")
    record "(umask 077 && printf 'bench %s\\n' \"\$(head -c 32 /dev/urandom | base64 | tr -d '=+/')\" >$OUT/auth-secret)"
    start_relay --auth optional --auth-secret-file "$OUT/auth-secret"
    for ((r = 1; r <= REPEAT; r++)); do
        run_load "calls-reconnect-bare-relay-r$r" relay calls --pairs 10 --reconnect --addr "127.0.0.1:$RELAY_PORT" "${COMMON[@]}"
        run_load "calls-reconnect-token-relay-r$r" relay calls --pairs 10 --reconnect --secret-file "$OUT/auth-secret" --addr "127.0.0.1:$RELAY_PORT" "${COMMON[@]}"
    done
fi

# Idle connections, each on a fresh relay so earlier runs' memory does not count.
if want idle; then
    for connections in 5000 15000; do
        start_relay --max-connections 20000
        run_load "idle-c$connections-relay" relay idle --connections "$connections" --addr "127.0.0.1:$RELAY_PORT" "${IDLE_COMMON[@]}"
    done
fi

# Two nodes of a cluster on one Redis (issue 11): 1000 audio pairs with
# every caller on node A and every callee on node B (ID-cross-rN), side by
# side with all pairs on node A (ID-same-rN), interleaved; the CPU figures
# are both nodes' summed (--server-pid twice). Then Redis's command count
# around a cross-node calls run and around the registrations of a run.
if want cluster; then
    stop_relay
    mapfile -t PORTS < <(free_ports 3)
    REDIS_PORT=${PORTS[0]} NODE_A_PORT=${PORTS[1]} NODE_B_PORT=${PORTS[2]}
    cmd=("${NICE[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no)
    record "$(quote "${cmd[@]}") >/dev/null & REDIS_PID=\$!"
    "${cmd[@]}" >/dev/null &
    REDIS_PID=$!
    wait_listening "$REDIS_PORT" "$REDIS_PID" || die "redis-server did not listen on 127.0.0.1:$REDIS_PORT"
    NODE_PIDS=()
    for node in a:"$NODE_A_PORT" b:"$NODE_B_PORT"; do
        cmd=("${NICE[@]}" "$RELAY" --listen "127.0.0.1:${node#*:}" --cluster "redis://127.0.0.1:$REDIS_PORT"
            --node-id "node-${node%%:*}" --trunk-listen 127.0.0.1:0)
        record "RUST_LOG=warn $(quote "${cmd[@]}") 2>>$OUT/relay.log & NODE_${node%%:*}_PID=\$!"
        RUST_LOG=warn "${cmd[@]}" 2>>"$OUT/relay.log" &
        NODE_PIDS+=($!)
        wait_listening "${node#*:}" "$!" || die "cluster node ${node%%:*} did not listen (see $OUT/relay.log)"
    done
    BOTH=(--server-pid "${NODE_PIDS[0]}" --server-pid "${NODE_PIDS[1]}")
    # The directory's scripts run (EVAL: what registrations, departures and
    # call set-ups could cost; Redis's own counters also count the commands
    # inside scripts, so they are not summed).
    redis_commands() {
        redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' '/^cmdstat_eval:/ { print $3 + 0; found = 1 } END { if (!found) print 0 }'
    }
    for ((r = 1; r <= REPEAT; r++)); do
        run_load "cluster160-p1000-cross-r$r" none media --pairs 1000 --size 160 --rate 50 --framing framed "${MEDIA[@]}" \
            --addr "127.0.0.1:$NODE_A_PORT" --addr "127.0.0.1:$NODE_B_PORT" "${BOTH[@]}"
        run_load "cluster160-p1000-same-r$r" none media --pairs 1000 --size 160 --rate 50 --framing framed "${MEDIA[@]}" \
            --addr "127.0.0.1:$NODE_A_PORT" "${BOTH[@]}"
    done
    record "redis-cli -p $REDIS_PORT info commandstats | grep cmdstat_eval # before and after each of the next two runs"
    before=$(redis_commands)
    run_load "cluster-calls-cross" none calls --pairs 10 --addr "127.0.0.1:$NODE_A_PORT" --addr "127.0.0.1:$NODE_B_PORT" "${COMMON[@]}" "${BOTH[@]}"
    after=$(redis_commands)
    echo "calls $before $after" >"$OUT/cluster-redis.txt"
    before=$(redis_commands)
    run_load "cluster-register-cross" none calls --pairs 10 --reconnect --addr "127.0.0.1:$NODE_A_PORT" --addr "127.0.0.1:$NODE_B_PORT" "${COMMON[@]}" "${BOTH[@]}"
    after=$(redis_commands)
    echo "reconnect $before $after" >>"$OUT/cluster-redis.txt"
    record "kill \$NODE_a_PID \$NODE_b_PID \$REDIS_PID"
    for pid in "${NODE_PIDS[@]}" "$REDIS_PID"; do stop_pid "$pid"; done
fi

stop_relay
record "kill \$HAPROXY_PID; wait \$HAPROXY_PID"
stop_pid "$HAPROXY_PID"
HAPROXY_PID=""

# ---------------------------------------------------------------- report

SECONDS_TOTAL=$(awk -v a="$SUITE_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
echo "suite_seconds: $SECONDS_TOTAL" >>"$OUT/machine.txt"
REPORT=bench/RESULTS.md
if [[ -n "$ONLY" ]]; then
    REPORT=$OUT/RESULTS.md # a partial run leaves the full report alone
fi
python3 bench/report.py "$OUT" "$REPORT"
say "wrote $REPORT (raw results in $OUT/, suite ${SECONDS_TOTAL}s)"
if [[ "$FAILED" -ne 0 ]]; then
    say "$FAILED run(s) failed: see bench/RESULTS.md and $OUT/*.err"
    exit 1
fi
