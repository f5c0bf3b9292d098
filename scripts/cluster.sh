#!/usr/bin/env bash
# A Spark standalone cluster on this machine: one master and two workers on 127.0.0.1,
# started from the installed pyspark (the pip package has no sbin scripts for them).
#
#   scripts/cluster.sh start|stop|status
#
# Everything lives in one folder, CFSPARK_CLUSTER_DIR (default: .cluster in the repo):
#   master.url           spark://127.0.0.1:PORT, written once the master accepts connections
#   *.pid                the pids this script started (master, worker-1, worker-2)
#   ports                the ports chosen (free ones, never the fixed 7077/8080)
#   logs/*.log           each daemon's stdout and stderr
#   worker-N/            each worker's work dir (executors' cwd, stderr and stdout)
#   worker-N/local       each worker's scratch (shuffle files, spilled blocks)
# Every process and port binds to 127.0.0.1 only (SPARK_LOCAL_IP, --host).
#
# Environment: CFSPARK_PYTHON (a python with pyspark; default .venv/bin/python),
# CFSPARK_WORKER_MEMORY (memory a worker offers executors; default 1g),
# CFSPARK_DAEMON_MEMORY (heap of the master and worker JVMs; default 256m).
# stop kills exactly the pids in the *.pid files (checking each still runs the daemon it
# started), then removes the pid files; a worker stops its own executors as it exits.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CFSPARK_CLUSTER_DIR:-$repo/.cluster}"
python="${CFSPARK_PYTHON:-$repo/.venv/bin/python}"
worker_memory="${CFSPARK_WORKER_MEMORY:-1g}"
workers=2

daemon_class() {  # the JVM class a pid file's process must be running
    case "$1" in
        master) echo org.apache.spark.deploy.master.Master ;;
        *) echo org.apache.spark.deploy.worker.Worker ;;
    esac
}

alive() {  # name -> 0 if its recorded pid still runs the daemon this script started
    local name="$1" pid
    [[ -f "$dir/$name.pid" ]] || return 1
    pid="$(cat "$dir/$name.pid")"
    [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$(daemon_class "$name")"
}

free_ports() {  # n -> n distinct free loopback ports
    "$python" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for_port() {  # port seconds -> 0 once something listens on 127.0.0.1:port
    "$python" - "$1" "$2" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < deadline:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(0)
    time.sleep(0.5)
sys.exit(1)
EOF
}

launch() {  # name cwd args... -> starts spark-class in the background, records its pid
    local name="$1" cwd="$2"
    shift 2
    # spark-class ends in exec, so $! is the daemon's JVM. A clean environment: no
    # PYTHONPATH, and a cwd of its own, so executors never see the source tree.
    (cd "$cwd" && exec env -u PYTHONPATH -u SPARK_CONF_DIR SPARK_HOME="$spark_home" SPARK_LOCAL_IP=127.0.0.1 \
        SPARK_LOCAL_HOSTNAME=127.0.0.1 SPARK_DAEMON_MEMORY="${CFSPARK_DAEMON_MEMORY:-256m}" \
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false" \
        SPARK_LOCAL_DIRS="$cwd/local" SPARK_LOG_DIR="$dir/logs" \
        nohup "$spark_home/bin/spark-class" "$@" >"$dir/logs/$name.log" 2>&1 </dev/null) &
    echo $! >"$dir/$name.pid"
}

start() {
    if alive master; then
        echo "already running: $(cat "$dir/master.url" 2>/dev/null)"
        return 0
    fi
    stop_all quiet
    spark_home="$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
    mkdir -p "$dir/logs"
    rm -f "$dir/master.url"
    read -r mport mui w1port w1ui w2port w2ui < <(free_ports 6)
    echo "master=$mport master_ui=$mui worker-1=$w1port worker-1_ui=$w1ui worker-2=$w2port worker-2_ui=$w2ui" >"$dir/ports"
    mkdir -p "$dir/master"
    launch master "$dir/master" org.apache.spark.deploy.master.Master \
        --host 127.0.0.1 --port "$mport" --webui-port "$mui"
    if ! wait_for_port "$mport" 60; then
        echo "the master did not start; see $dir/logs/master.log" >&2
        stop_all quiet
        return 1
    fi
    local url="spark://127.0.0.1:$mport" n ports=("$w1port" "$w1ui" "$w2port" "$w2ui")
    for n in $(seq 1 $workers); do
        mkdir -p "$dir/worker-$n/local"
        launch "worker-$n" "$dir/worker-$n" org.apache.spark.deploy.worker.Worker \
            --host 127.0.0.1 --port "${ports[$(((n - 1) * 2))]}" --webui-port "${ports[$(((n - 1) * 2 + 1))]}" \
            --cores 1 --memory "$worker_memory" --work-dir "$dir/worker-$n" "$url"
    done
    # Ready once the master's log says every worker registered.
    local deadline=$((SECONDS + 60))
    while (($(grep -c "Registering worker" "$dir/logs/master.log" || true) < workers)); do
        if ((SECONDS > deadline)); then
            echo "the workers did not register; see $dir/logs" >&2
            stop_all quiet
            return 1
        fi
        sleep 0.5
    done
    echo "$url" >"$dir/master.url"
    echo "$url"
}

stop_all() {
    local name pid quiet="${1:-}"
    for name in worker-2 worker-1 master; do
        [[ -f "$dir/$name.pid" ]] || continue
        pid="$(cat "$dir/$name.pid")"
        if alive "$name"; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 40); do
                alive "$name" || break
                sleep 0.25
            done
            if alive "$name"; then kill -9 "$pid" 2>/dev/null || true; fi
            [[ -n "$quiet" ]] || echo "stopped $name ($pid)"
        fi
        rm -f "$dir/$name.pid"
    done
    rm -f "$dir/master.url"
}

status() {
    local name running=0
    for name in master $(seq -f "worker-%g" 1 $workers); do
        if alive "$name"; then
            echo "$name: running (pid $(cat "$dir/$name.pid"))"
            running=$((running + 1))
        else
            echo "$name: stopped"
        fi
    done
    [[ -f "$dir/ports" ]] && echo "ports: $(cat "$dir/ports")"
    [[ -f "$dir/master.url" ]] && echo "master: $(cat "$dir/master.url")"
    echo "logs: $dir/logs"
    ((running == workers + 1))
}

case "${1:-}" in
    start) start ;;
    stop) stop_all ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 64
        ;;
esac
