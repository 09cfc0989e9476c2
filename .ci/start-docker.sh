#!/usr/bin/env bash
# Make sure a local Docker engine answers on this machine (CI helper; idempotent).
#
#  * installs Debian's `docker.io` with apt when `dockerd` is missing (needs root),
#  * starts `dockerd --storage-driver=vfs` in the background when the engine does not
#    answer (log: $DOCKERD_LOG, default /tmp/dockerd.log),
#  * waits until `docker info` answers (at most $DOCKER_START_TIMEOUT seconds, default 90),
#  * prints one line with the engine version.
#
# A no-op (apart from the version line) when the engine already answers.
# Environment knobs: DOCKER_START_TIMEOUT, DOCKERD_LOG, DOCKER_STORAGE_DRIVER (default vfs).
set -euo pipefail

TIMEOUT="${DOCKER_START_TIMEOUT:-90}"
LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
DRIVER="${DOCKER_STORAGE_DRIVER:-vfs}"

say() { echo "start-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

# pids of running dockerd processes (no procps needed: a fresh Debian may lack pgrep)
dockerd_pids() {
    local f pid
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = dockerd ] || continue
        pid="${f#/proc/}"; echo "${pid%/comm}"
    done
}

print_version() {
    local v d
    v="$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
    d="$(docker info --format '{{.Driver}}' 2>/dev/null || echo '?')"
    echo "docker engine ${v} ready (storage driver ${d}, client $(docker version --format '{{.Client.Version}}' 2>/dev/null || echo '?'))"
}

# 1. Already running? Nothing to do.
if command -v docker >/dev/null 2>&1 && engine_answers; then
    print_version
    exit 0
fi

# 2. Install the engine if missing.
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "dockerd is not installed and we are not root: install docker.io (apt-get install docker.io) first"
    command -v apt-get >/dev/null 2>&1 || die "dockerd is not installed and apt-get is unavailable"
    say "installing docker.io with apt ..."
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends docker.io ca-certificates iptables >/dev/null \
        || die "apt-get install docker.io failed"
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is not on PATH"
fi

# 3. Start dockerd unless one is already starting up.
pids="$(dockerd_pids | tr '\n' ' ')"
if [ -n "${pids// /}" ]; then
    say "dockerd is already running (pid ${pids% }); waiting for it to answer"
else
    [ "$(id -u)" -eq 0 ] || die "the Docker engine does not answer and only root can start dockerd"
    # A pid file left by a dead dockerd makes the new one refuse to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid 2>/dev/null)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    say "starting dockerd --storage-driver=${DRIVER} (log: ${LOG})"
    # setsid + nohup: the engine outlives this script and the CI step's shell.
    setsid nohup dockerd --storage-driver="${DRIVER}" >>"${LOG}" 2>&1 </dev/null &
fi

# 4. Wait for it.
start=$SECONDS
until engine_answers; do
    if [ -z "$(dockerd_pids)" ]; then
        say "dockerd exited; last lines of ${LOG}:"
        tail -n 20 "${LOG}" >&2 2>/dev/null || true
        die "dockerd did not stay up"
    fi
    if (( SECONDS - start >= TIMEOUT )); then
        say "last lines of ${LOG}:"
        tail -n 20 "${LOG}" >&2 2>/dev/null || true
        die "the Docker engine did not answer 'docker info' within ${TIMEOUT}s"
    fi
    sleep 1
done
say "engine answered after $(( SECONDS - start ))s"
print_version
