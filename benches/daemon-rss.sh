#!/usr/bin/env bash
# The daemon's resident memory with N provisioned extensions: the simulator and `run` as real
# processes, on SQLite. Prints RSS (from /proc) after the first full pass, and again when idle,
# then the peak of a `sync` that finds nothing to change (the steady full reconcile's cost).
#   B=target/release/mbg-provision N=100000 benches/daemon-rss.sh
set -euo pipefail
B=$(realpath "${B:-target/release/mbg-provision}")
N=${N:-100000}
PORT=${PORT:-18080}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
"$B" simulate --listen "127.0.0.1:$PORT" --consumer MiVOAppSuite:bench-secret \
  --icp MiVO250-1=10.0.0.20 --auto-approve >sim.log 2>&1 &
cat >config.toml <<TOML
[database]
url = "sqlite://$dir/ext.db"
[mbg]
base_url = "http://127.0.0.1:$PORT/mslrest"
max_in_flight = 32
[http]
listen = "127.0.0.1:0"
TOML
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
"$B" node add pbx1 --address 10.0.0.20 >/dev/null
{ echo "number,node,kind,remote"; seq 1000000 $((1000000 + N - 1)) | sed 's/$/,pbx1,sip,on/'; } >ext.csv
"$B" extension import ext.csv >/dev/null
(umask 077; echo bench-secret >secret)
"$B" token request --name bench --consumer-id MiVOAppSuite --secret-file secret >request.txt
temp=$(grep -o '"[^"]*"\|[A-Za-z0-9+/=_-]\{16,\}' request.txt | head -1 | tr -d '"')
encoded=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$temp")
verifier=$(curl -s -X POST "http://127.0.0.1:$PORT/sim/tokens/$encoded/approve" | tee approve.txt | grep -o '[0-9]\{4,\}' | head -1)
"$B" token verify "$verifier" >/dev/null
# The simulator and the commands above ran the same binary, so its every page is in the OS's
# cache, and each page fault of `run` would map up to 128 KiB of them (fault-around, as measured
# here). At a boot nothing else has run it: `run` starts from a copy of the binary dropped from
# the cache.
cp "$B" daemon && sync daemon
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' daemon
started=$(date +%s.%N)
RUST_LOG=warn ${MALLOC_ENV:-} ./daemon run >run.log 2>&1 &
pid=$!
while [ "$(sqlite3 ext.db "select count(*) from extensions where state = 'provisioned'" 2>/dev/null || echo 0)" -lt "$N" ]; do
  kill -0 $pid || { cat run.log; exit 1; }
  sleep 1
done
echo "provisioned $N in $(echo "$(date +%s.%N) - $started" | bc) s"
rss() { awk '/VmRSS|VmHWM|RssAnon|RssFile/ {printf "%s %.1f MB  ", $1, $2/1024}' /proc/$pid/status; echo; }
echo -n "after the first pass: "; rss
sleep "${IDLE_SECONDS:-20}"
echo -n "idle ${IDLE_SECONDS:-20} s later:    "; rss
if [ -n "${SMAPS:-}" ]; then
  awk '/^[0-9a-f]+-/ {name=$6} /^Rss:/ {rss[name]+=$2} END {for (n in rss) if (rss[n] > 1024) printf "%8d kB %s\n", rss[n], n}' /proc/$pid/smaps | sort -rn | head
  sqlite3 ext.db "select count(*) from extension_changes"
  grep -c "full reconcile\|changes applied" run.log || true
fi
kill -TERM $pid; wait $pid || true
if [ -n "${KEEP_LOG:-}" ]; then cp run.log "$KEEP_LOG"; fi
# A full reconcile with nothing to change: the MBG's N SIP users read, every row planned.
/usr/bin/time -f "no-change sync of $N: %e s, peak RSS %M kB" "$B" sync --quiet
