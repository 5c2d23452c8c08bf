#!/usr/bin/env bash
# Writes the list of functions runnerd runs from boot to idle and while serving its common routes,
# as mangled symbols (the set is what matters, not its order): build-static.sh links them first so
# that what an idle runnerd touches sits in few pages (fault-around maps the binary 64 KiB at a
# time; scattered, the functions an idle runnerd needs keep ~3 MiB of text resident).
#
#   scripts/runnerd-symbol-order.sh BINARY OUT   (BINARY: an unstripped static build)
set -euo pipefail
bin=$1 out=$2
command -v valgrind >/dev/null || { echo "runnerd-symbol-order: valgrind is needed" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/ws"
TALE_RUNNERD_TOKEN=order RUST_LOG=info valgrind --tool=callgrind --demangle=no \
  --callgrind-out-file="$work/callgrind.out" \
  "$bin" runnerd --listen "127.0.0.1:$port" --workspace-root "$work/ws" --exec-user "$(id -u):$(id -g)" \
  >"$work/runnerd.log" 2>&1 &
pid=$!
# Not -f: valgrind 3.19 lacks openat2, so the file routes answer 404 under it (their HTTP and JSON
# code still runs).
call() { curl -sS -H 'x-tale-runnerd-token: order' "$@" >/dev/null; }
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
url="http://127.0.0.1:$port"
call "$url/healthz"
call -d '{"execId":"o1","shell":"echo out; echo err >&2","timeoutMs":10000}' "$url/execs"
call "$url/execs/o1/attach?sinceSeq=0"
call "$url/execs/o1"
call -d '{"set":{"A":"1"},"unset":["B"]}' "$url/env"
call -d '{"files":[{"path":"f.txt","contentBase64":"aGkK"}]}' "$url/files/stage"
call "$url/fs/list?path=."
call "$url/fs/read?path=f.txt"
call -d '{"paths":["f.txt"]}' "$url/files/delete"
call -d '{"execId":"o2","command":["cat"],"stdinMode":"hold","timeoutMs":10000}' "$url/execs" &
sleep 1
call -d '{"b64":"e30K","eof":true}' "$url/execs/o2/stdin"
wait %2 2>/dev/null || true
kill -TERM "$pid"
wait "$pid" || true
# Function entries in the order callgrind first met them (fn= and cfn= name a function the first
# time they mention its id).
grep -oE '^c?fn=\([0-9]+\) [^ ]+' "$work/callgrind.out" | sed -E 's/^c?fn=\([0-9]+\) //' \
  | grep -vE '^0x' | awk '!seen[$0]++' >"$out"
echo "runnerd-symbol-order: $(wc -l <"$out") functions -> $out"
