#!/bin/sh
# Every benchmark of issue 17's table (the fast path), one after another, each beside its reference:
#   bench/fastpath.sh [OUTDIR]        (default: bench-fastpath-<date> in the current folder)
# One file per benchmark in OUTDIR (table on stdout -> NAME.txt, progress -> NAME.err) and index.txt with the
# start, end and load average of each. About 12 minutes on a quiet 2-vCPU machine; run it with nothing else
# running, since the rates move with the load.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench-fastpath-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$OUT"
run() {
    name=$1; shift
    echo "== $name $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/index.txt"
    .venv/bin/python "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"
    echo "   rc=$? end $(date -u +%H:%M:%S)" >> "$OUT/index.txt"
}
run smtp bench/smtp.py --count 10000 --size 5000 --sessions 20 --one-worker
run pop3 bench/pop3.py
run mailbox bench/imap_mailbox.py --count 20000 --runs 5
run steady bench/imap.py --steady --one-worker
run idle bench/imap.py --idle-only --idle 1000
run churn bench/imap.py --churn
run smtp_memory bench/smtp_memory.py
run outbound bench/outbound.py --count 5000
cat "$OUT/index.txt"
