#!/usr/bin/env bash
# build-image-cpu.sh - a real container image build with no registry (`make image-cpu`):
#   1. installs podman + debootstrap from Debian when missing (needs root);
#   2. bootstraps a Debian bookworm minbase root filesystem with debootstrap, from
#      the mirror apt already uses (read from /etc/apt/sources.list* at run time),
#      and imports it as the local base image $BASE (skipped when it exists,
#      REBUILD_BASE=1 forces it);
#   3. builds docker/Dockerfile.cpu (CPU backend) FROM that base as $IMAGE, in
#      docker format so that HEALTHCHECK is kept (OCI image configs drop it);
#   4. smoke-tests the image: test/models/tiny-llama3 mounted read-only, /health
#      200, one /v1/completions, the healthcheck command, the server process runs
#      as uid 10001 (not root), then a clean stop. Prints the time of each step.
# Not in .ci/run: minutes of apt + compile. Storage driver: podman's default
# (overlay here); STORAGE_DRIVER=vfs where overlay mounts are refused.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-localhost/nanoinfer-debian:bookworm-minbase}
IMAGE=${IMAGE:-localhost/nanoinfer-cpu:dev}
SUITE=bookworm
PORT=${PORT:-18431}
WORK=build/image-cpu
NAME=nanoinfer-cpu-smoke
P=(podman)
[ -n "${STORAGE_DRIVER:-}" ] && P+=(--storage-driver "$STORAGE_DRIVER")
# Container options for this kind of host (a VM with hybrid cgroups v1+v2 and
# no CAP_SYS_RESOURCE): crun refuses hybrid cgroups ("cgroups in hybrid mode
# not supported"), so runc; podman's default rlimits (nofile 1048576) exceed
# the host's hard limits and cannot be raised ("error setting rlimit type 7:
# operation not permitted"), so the host's nofile and a modest nproc.
RUNTIME=${RUNTIME:-runc}
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
C=(--runtime "$RUNTIME" --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=${NPROC:-8192}:${NPROC:-8192}")

t_start=$(date +%s.%N)
t_last=$t_start
step() {  # step NAME: print the seconds since the previous step
  local now; now=$(date +%s.%N)
  printf '[%7.1f s] %s (%.1f s)\n' "$(echo "$now - $t_start" | bc)" "$1" "$(echo "$now - $t_last" | bc)"
  t_last=$now
}
die() { echo "FAIL: $*" >&2; exit 1; }

# ---- 1. tools ----------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman uidmap fuse-overlayfs slirp4netns containernetworking-plugins)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}: run as root or apt-get install them"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
echo "$(podman --version), $("$RUNTIME" --version | head -1), debootstrap $(dpkg-query -W -f '${Version}' debootstrap)," \
  "storage $("${P[@]}" info --format '{{.Store.GraphDriverName}}')"
step "tools"

# ---- 2. local base image -----------------------------------------------
# The first main archive apt is configured with (deb822 .sources or one-line
# sources.list) that carries the suite; never a hard-coded host.
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk -v s="$SUITE" '
      function emit() { if (u != "" && ok) { print u; done = 1; exit } u = ""; ok = 0 }
      /^[ \t]*$/ { emit(); next }
      tolower($1) == "uris:" { u = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
      END { if (!done) emit() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$f" ] || continue
    # deb [options] URI suite components...
    awk -v s="$SUITE" '$1 == "deb" { i = 2; if ($i ~ /^\[/) while ($i !~ /\]$/) i++; if ($i ~ /\]$/ && $2 ~ /^\[/) i++
                                     if ($(i + 1) == s) print $i }' "$f"
  done
}
if [ "${REBUILD_BASE:-0}" = 1 ] || ! "${P[@]}" image exists "$BASE"; then
  MIRROR=$(mirror | awk 'NR == 1')  # not head: SIGPIPE + pipefail would stop here
  [ -n "$MIRROR" ] || die "no '$SUITE' archive in /etc/apt/sources.list*"
  echo "debootstrap --variant=minbase $SUITE from $MIRROR"
  rm -rf "$WORK/rootfs"
  mkdir -p "$WORK"
  debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log"; die "debootstrap (log: $WORK/debootstrap.log)"; }
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" --numeric-owner -c . |
    "${P[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
  step "base image $BASE ($("${P[@]}" image inspect --format '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
else
  step "base image $BASE (exists)"
fi

# ---- 3. image build -----------------------------------------------------
# --network host: the build's apt reaches the archive exactly as the host does.
"${P[@]}" build "${C[@]}" --format docker --network host --pull=never \
  -f docker/Dockerfile.cpu --ignorefile docker/Dockerfile.cpu.dockerignore \
  --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" .
step "image build $IMAGE ($("${P[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"

# ---- 4. smoke test ------------------------------------------------------
user=$("${P[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = "10001:10001" ] || die "image USER is '$user', not 10001:10001"
hc=$("${P[@]}" image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
[[ "$hc" == '["CMD","curl",'* ]] || die "image HEALTHCHECK is '$hc', not the exec form"
"${P[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
cleanup() { "${P[@]}" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${P[@]}" run "${C[@]}" -d --name "$NAME" -p "127.0.0.1:$PORT:8000" \
  -v "$PWD/test/models/tiny-llama3:/models/tiny-llama3:ro" \
  "$IMAGE" --model /models/tiny-llama3 --threads 1 >/dev/null
URL=http://127.0.0.1:$PORT
code=000
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/health" || true)
  [ "$code" = 200 ] && break
  "${P[@]}" container exists "$NAME" && [ "$("${P[@]}" inspect --format '{{.State.Running}}' "$NAME")" = true ] ||
    { "${P[@]}" logs "$NAME" | tail -20; die "the container exited"; }
  sleep 0.5
done
[ "$code" = 200 ] || { "${P[@]}" logs "$NAME" | tail -20; die "/health is $code after 60 s"; }
step "container up, /health 200"
body=$(curl -sS -w '\n%{http_code}' "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt":"hello world","max_tokens":8,"ignore_eos":true}')
code=${body##*$'\n'}
body=${body%$'\n'*}
[ "$code" = 200 ] || die "/v1/completions: HTTP $code: $body"
echo "$body" | python3 -c 'import json, sys; r = json.load(sys.stdin); assert r["usage"]["completion_tokens"] == 8, r; print("completion:", repr(r["choices"][0]["text"]))'
step "/v1/completions 200, 8 tokens"
"${P[@]}" healthcheck run "$NAME" >/dev/null || die "the image's HEALTHCHECK command fails"
step "HEALTHCHECK command passes"
# Root podman without a user namespace: the container's uid is the host's.
pid=$("${P[@]}" inspect --format '{{.State.Pid}}' "$NAME")
uids=$(awk '$1 == "Uid:" {print $2, $3, $4, $5}' "/proc/$pid/status")
gids=$(awk '$1 == "Gid:" {print $2, $3, $4, $5}' "/proc/$pid/status")
comm=$(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-60)
[ "$uids" = "10001 10001 10001 10001" ] && [ "$gids" = "10001 10001 10001 10001" ] ||
  die "$comm (pid $pid) runs as uid '$uids' gid '$gids', not 10001"
echo "process $comm (host pid $pid): uid $uids, gid $gids"
step "server runs as uid 10001"
"${P[@]}" stop -t 45 "$NAME" >/dev/null
rc=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$rc" = 0 ] || { "${P[@]}" logs "$NAME" | tail -20; die "exit status $rc after SIGTERM"; }
step "stopped by SIGTERM, exit 0"
echo "image-cpu: OK ($IMAGE)"
