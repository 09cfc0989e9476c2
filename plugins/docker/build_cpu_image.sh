#!/usr/bin/env bash
# Build, without any container registry, a local CPU-only image that looks like NVIDIA's
# nvcr.io/nvidia/tritonserver:<YY.MM>-py3 to a user:
#
#   /opt/tritonserver/bin/tritonserver      (also on PATH)
#   /opt/tritonserver/backends/python/      (Python backend + stub for the image's Python 3.11)
#   /opt/tritonserver/caches/local/         (local response cache)
#   /opt/tritonserver/lib/                  (libtritonserver and the libraries it was built with)
#   /usr/bin/python3 with numpy             (Debian bookworm)
#
#   docker run -p 8000:8000 -v REPO:/models:ro IMAGE tritonserver --model-repository=/models
#
# How: debootstrap a minimal Debian bookworm (from the apt mirror this machine uses), copy in
# the tritonserver 2.51 (= Triton 24.10) that PyPI's nvidia-pytriton wheel ships, and
# `docker import` the result. Nothing is pulled from a registry.
#
# Caches (under --cache DIR): the wheel, debootstrap's .deb files and the cleaned base root
# filesystem as a tarball. An existing image tag is the cache between runs: the build is
# skipped unless --force.
#
# Needs: a reachable Docker engine (see .ci/start-docker.sh), PyPI through pip, and root
# for the first build (debootstrap; installed with apt when missing). A rebuild from the
# cached base tarball needs no root.
set -euo pipefail

PYTRITON_VERSION="${PYTRITON_VERSION:-0.7.0}"   # ships tritonserver 2.51 = NGC 24.10
TRITON_VERSION="2.51.0"
NGC_RELEASE="24.10"
SUITE="bookworm"
BASE_PACKAGES="python3,python3-numpy,libpython3.11"

TAG="triton-deployer/tritonserver-cpu:${NGC_RELEASE}-py3"
FORCE=0
NO_CACHE=0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/triton-deployer/image-build"
MIRROR="${DEBIAN_MIRROR:-}"
EXTRA_PACKAGES=""

usage() {
    cat <<EOF
usage: $(basename "$0") [--tag TAG] [--force] [--cache DIR] [--mirror URL]
                        [--extra-packages PKG[,PKG...]] [--no-cache]

  --tag TAG          image tag (default: ${TAG})
  --force            rebuild even if TAG already exists in the engine
  --cache DIR        cache folder for the wheel, .debs and the base rootfs tarball
                     (default: \${XDG_CACHE_HOME:-\$HOME/.cache}/triton-deployer/image-build)
  --mirror URL       Debian mirror for debootstrap (default: the one apt uses here,
                     or \$DEBIAN_MIRROR)
  --extra-packages   more Debian packages for the image (comma separated)
  --no-cache         ignore the cached base rootfs tarball and wheel (rebuild them)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) TAG="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --cache) CACHE="${2:?--cache needs a value}"; shift 2 ;;
        --cache=*) CACHE="${1#*=}"; shift ;;
        --mirror) MIRROR="${2:?--mirror needs a value}"; shift 2 ;;
        --mirror=*) MIRROR="${1#*=}"; shift ;;
        --extra-packages) EXTRA_PACKAGES="${2:?--extra-packages needs a value}"; shift 2 ;;
        --extra-packages=*) EXTRA_PACKAGES="${1#*=}"; shift ;;
        --no-cache) NO_CACHE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "build_cpu_image: unknown argument: $1" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- progress with timings
T0="$(date +%s%N)"
TSTEP="$T0"
_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
log() { echo "[build_cpu_image +$(_secs "$T0" "$(date +%s%N)")s] $*" >&2; }
step_done() {   # step_done "what" : prints the duration since the last step
    local now; now="$(date +%s%N)"
    log "$1 ($(_secs "$TSTEP" "$now")s)"
    TSTEP="$now"
}
die() { echo "build_cpu_image: ERROR: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------- docker reachable?
command -v docker >/dev/null 2>&1 \
    || die "the docker client is not installed (on a CI machine: run .ci/start-docker.sh)"
if ! docker_err="$(docker info 2>&1 >/dev/null)"; then
    case "$docker_err" in
        *"permission denied"*)
            die "no permission to use the Docker engine (${docker_err##*$'\n'}); run as root or join the docker group" ;;
        *) die "the Docker engine is unreachable (${docker_err##*$'\n'}); start it first, e.g. .ci/start-docker.sh" ;;
    esac
fi

if [ "$FORCE" -eq 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image ${TAG} already exists: nothing to do (use --force to rebuild)"
    exit 0
fi

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/triton-image-build.XXXXXX")"
ROOTFS=""
# Remove a tree made by debootstrap, never through a mount point left in it (debootstrap
# bind-mounts /dev and mounts proc/sys in the target while it runs).
safe_rm_tree() {
    local d="$1" m
    [ -d "$d" ] || return 0
    for m in $(awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if awk -v p="$d/" 'index($2, p) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        echo "build_cpu_image: WARNING: something is still mounted under $d; not removing it" >&2
        return 0
    fi
    rm -rf --one-file-system "$d"
}
cleanup() {
    local rc=$?
    safe_rm_tree "$WORK"
    [ "$rc" -eq 0 ] || echo "build_cpu_image: failed (exit $rc)" >&2
}
trap cleanup EXIT

apt_install() {   # apt_install PKG... (root only)
    is_root || return 1
    command -v apt-get >/dev/null 2>&1 || return 1
    log "installing $* with apt"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- 1. the wheel
WHEEL_DIR="$CACHE/wheels"
mkdir -p "$WHEEL_DIR"
[ "$NO_CACHE" -eq 0 ] || rm -f "$WHEEL_DIR"/nvidia_pytriton-"${PYTRITON_VERSION}"-*.whl
WHEEL="$(ls "$WHEEL_DIR"/nvidia_pytriton-"${PYTRITON_VERSION}"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
    PIP=()
    if python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
    elif command -v pip3 >/dev/null 2>&1; then PIP=(pip3)
    elif command -v pip >/dev/null 2>&1; then PIP=(pip)
    elif apt_install python3-pip; then PIP=(python3 -m pip)
    else die "pip is needed to download nvidia-pytriton==${PYTRITON_VERSION} (install python3-pip)"
    fi
    log "downloading nvidia-pytriton==${PYTRITON_VERSION} from PyPI"
    # The wheel is tagged py3-none-manylinux_2_35_x86_64; ask for exactly that, whatever the
    # host's Python or glibc.
    "${PIP[@]}" download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_35_x86_64 --python-version 3.11 --implementation py \
        --dest "$WHEEL_DIR" "nvidia-pytriton==${PYTRITON_VERSION}" >&2 \
        || die "pip download nvidia-pytriton==${PYTRITON_VERSION} failed"
    WHEEL="$(ls "$WHEEL_DIR"/nvidia_pytriton-"${PYTRITON_VERSION}"-*.whl | head -n1)"
    step_done "wheel downloaded: $(basename "$WHEEL")"
else
    step_done "wheel cached: $(basename "$WHEEL")"
fi

# ---------------------------------------------------------------- 2. the base rootfs
find_mirror() {   # first Debian (not -security) URI in apt's sources
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: skip disabled stanzas, take URIs of stanzas whose Suites has $SUITE.
        awk -v suite="$SUITE" '
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { if (uri != "" && ok && en) { print uri; exit } uri=""; ok=0; en=1; next }
            BEGIN { en=1 }
            tolower($1) == "enabled:" && tolower($2) == "no" { en=0 }
            $1 == "URIs:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { uri=$i; break } }
            $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok=1 }
            END { if (uri != "" && ok && en) print uri }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # one-line format: deb [opts] URI SUITE COMPONENTS...
        awk -v suite="$SUITE" '
            $1 == "deb" { sub(/\[[^]]*\][[:space:]]*/, ""); if ($3 == suite && $2 !~ /security/) print $2 }
        ' "$f"
    done
}
if [ -z "$MIRROR" ]; then
    MIRROR="$(find_mirror | head -n1 || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

INCLUDE="$BASE_PACKAGES${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"
KEY="$(printf '%s|%s|%s|minbase|v2' "$SUITE" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-12)"
BASE_TAR="$CACHE/rootfs-${SUITE}-${KEY}.tar"
BASE_META="$CACHE/rootfs-${SUITE}-${KEY}.meta"
[ "$NO_CACHE" -eq 0 ] || rm -f "$BASE_TAR" "$BASE_META"

if [ -f "$BASE_TAR" ] && [ -f "$BASE_META" ]; then
    step_done "base rootfs cached: $BASE_TAR"
else
    is_root || die "the first build runs debootstrap, which needs root (re-run with sudo)"
    if ! command -v debootstrap >/dev/null 2>&1; then
        apt_install debootstrap || die "debootstrap is missing and could not be installed (apt-get install debootstrap)"
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (apt-get install debootstrap)"
    ROOTFS="$WORK/rootfs"
    DEBS="$CACHE/debs"
    mkdir -p "$ROOTFS" "$DEBS"
    log "debootstrap --variant=minbase ${SUITE} from ${MIRROR} (include: ${INCLUDE}); about a minute"
    if ! debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$DEBS" \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 25 "$WORK/debootstrap.log" >&2
        [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 25 "$ROOTFS/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (mirror ${MIRROR}); see the lines above"
    fi
    step_done "debootstrap done"

    # Slim it down: no apt lists/caches, docs, man pages, locales, logs.
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
           "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
           "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian "$ROOTFS"/usr/share/linda \
           "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/debootstrap
    # numpy's own test suites (~15 MB) are of no use in a serving image.
    find "$ROOTFS"/usr/lib/python3/dist-packages/numpy -type d -name tests -prune -exec rm -rf {} + 2>/dev/null || true
    : >"$ROOTFS/etc/resolv.conf"
    echo "tritonserver" >"$ROOTFS/etc/hostname"

    PYVER="$(chroot "$ROOTFS" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null \
             || readlink "$ROOTFS/usr/bin/python3" | sed -n 's/^python\([0-9]*\.[0-9]*\)$/\1/p')"
    NUMPY="$(chroot "$ROOTFS" /usr/bin/python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo '?')"
    [ -n "$PYVER" ] || die "could not tell the Python version of the base rootfs"

    tar -C "$ROOTFS" --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    printf 'PYVER=%s\nNUMPY=%s\nMIRROR=%s\nINCLUDE=%s\n' "$PYVER" "$NUMPY" "$MIRROR" "$INCLUDE" >"$BASE_META"
    safe_rm_tree "$ROOTFS"; ROOTFS=""
    step_done "base rootfs cached: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
fi
PYVER="$(sed -n 's/^PYVER=//p' "$BASE_META")"
NUMPY="$(sed -n 's/^NUMPY=//p' "$BASE_META")"

# ---------------------------------------------------------------- 3. the Triton overlay
OVL="$WORK/overlay"
OPT="$OVL/opt/tritonserver"
mkdir -p "$OPT"/{bin,lib,backends/python,caches}
# Extract only what the image needs, keeping the file modes (python's zipfile drops them).
python_for_unzip="$(command -v python3 || true)"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$WHEEL" 'pytriton/tritonserver/bin/*' 'pytriton/tritonserver/backends/*' \
        'pytriton/tritonserver/caches/*' "pytriton/tritonserver/python_backend_stubs/${PYVER}/*" \
        'nvidia_pytriton.libs/*' -d "$WORK/wheel"
elif [ -n "$python_for_unzip" ]; then
    "$python_for_unzip" - "$WHEEL" "$WORK/wheel" "$PYVER" <<'EOF'
import os, sys, zipfile
whl, dest, pyver = sys.argv[1:]
keep = ("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/",
        "pytriton/tritonserver/caches/", f"pytriton/tritonserver/python_backend_stubs/{pyver}/",
        "nvidia_pytriton.libs/")
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(keep) and not info.is_dir():
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
EOF
else
    die "neither unzip nor python3 is available to unpack the wheel"
fi
SRC="$WORK/wheel/pytriton/tritonserver"
STUB="$SRC/python_backend_stubs/${PYVER}/triton_python_backend_stub"
[ -x "$SRC/bin/tritonserver" ] || die "the wheel has no pytriton/tritonserver/bin/tritonserver"
[ -f "$STUB" ] || die "the wheel has no Python backend stub for Python ${PYVER} (the image's Python)"

cp -a "$SRC/bin/tritonserver" "$OPT/bin/"
cp -a "$SRC/backends/python/libtriton_python.so" "$SRC/backends/python/triton_python_backend_utils.py" \
      "$OPT/backends/python/"
cp -a "$STUB" "$OPT/backends/python/"
chmod 0755 "$OPT/bin/tritonserver" "$OPT/backends/python/triton_python_backend_stub"
cp -a "$SRC/caches/." "$OPT/caches/"
# Bundled libraries (auditwheel renamed them with a hash, so they cannot clash with Debian's).
# The bundled libpython3.13 only serves the 3.13 stub: leave it out for any other Python.
for lib in "$WORK/wheel/nvidia_pytriton.libs/"*; do
    case "$(basename "$lib")" in
        libpython3-*) [ "$PYVER" = "3.13" ] || continue ;;
    esac
    cp -a "$lib" "$OPT/lib/"
done
# The binaries' RPATH points at the wheel's layout ($ORIGIN/../../../nvidia_pytriton.libs);
# tritonserver also searches $ORIGIN/../lib, and the stub (a separate process) gets
# LD_LIBRARY_PATH from the image's ENV.
find "$OPT" -name '__pycache__' -prune -exec rm -rf {} +
printf '%s\n' "$TRITON_VERSION" >"$OPT/TRITON_VERSION"
cat >"$OPT/BUILD_INFO" <<EOF
tritonserver ${TRITON_VERSION} (NGC ${NGC_RELEASE}) from PyPI nvidia-pytriton==${PYTRITON_VERSION}
CPU only; backends: python (stub for Python ${PYVER}); Debian ${SUITE}, numpy ${NUMPY}
built by triton-deployer plugins/docker/build_cpu_image.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
mkdir -p "$OVL/models"
step_done "tritonserver ${TRITON_VERSION} laid out under /opt/tritonserver ($(du -sh "$OPT" | cut -f1))"

# ---------------------------------------------------------------- 4. import
# One archive = cached base + overlay appended (no extraction, no root needed here).
cp "$BASE_TAR" "$WORK/image.tar"
tar -C "$OVL" --numeric-owner --owner=0 --group=0 -rf "$WORK/image.tar" ./opt/tritonserver ./models
step_done "image archive assembled ($(du -h "$WORK/image.tar" | cut -f1))"

OLD_ID="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
IMAGE_PATH="/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
docker import \
    --change "ENV PATH=${IMAGE_PATH}" \
    --change "ENV LD_LIBRARY_PATH=/opt/tritonserver/lib" \
    --change "ENV TRITON_SERVER_VERSION=${TRITON_VERSION}" \
    --change "ENV NVIDIA_TRITON_SERVER_VERSION=${NGC_RELEASE}" \
    --change "ENV LANG=C.UTF-8" \
    --change "WORKDIR /opt/tritonserver" \
    --change "EXPOSE 8000 8001 8002" \
    --change "LABEL org.opencontainers.image.title=tritonserver-cpu com.nvidia.tritonserver.version=${TRITON_VERSION} triton-deployer.backends=python triton-deployer.source=nvidia-pytriton==${PYTRITON_VERSION}" \
    --change 'CMD ["tritonserver","--model-repository=/models"]' \
    --message "tritonserver ${TRITON_VERSION} CPU (python backend) from nvidia-pytriton ${PYTRITON_VERSION}" \
    "$WORK/image.tar" "$TAG" >/dev/null \
    || die "docker import failed"
step_done "imported as ${TAG}"
# --force: drop the image the tag pointed at before, unless a container or another tag uses it
# (with the vfs storage driver every stale image costs its full size on disk).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect --format '{{.Id}}' "$TAG")" ]; then
    docker image rm "$OLD_ID" >/dev/null 2>&1 && log "removed the previous image ${OLD_ID:7:12}" || true
fi

SIZE="$(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
log "done: ${TAG} (${SIZE}); run: docker run --rm -p 8000:8000 -v REPO:/models:ro ${TAG}"
