#!/usr/bin/env bash
# Build, without any container registry, a local CPU-only image that looks like NVIDIA's
# nvcr.io/nvidia/tritonserver:<YY.MM>-py3 to a user:
#
#   /opt/tritonserver/bin/tritonserver      (also on PATH)
#   /opt/tritonserver/backends/python/      (Python backend + stub for the image's Python 3.11)
#   /opt/tritonserver/caches/local/         (local response cache)
#   /opt/tritonserver/lib/                  (libtritonserver and the libraries it was built with)
#   /usr/bin/python3 with numpy             (Debian bookworm: Python 3.11, numpy 1.24)
#   /usr/local/lib/python3.11/dist-packages (onnxruntime and torch (CPU), pinned as in
#                                            deployer/shim.py, with their dependencies)
#
#   docker run -p 8000:8000 -v REPO:/models:ro IMAGE tritonserver --model-repository=/models
#
# The image has no ONNX Runtime or PyTorch *backend*: the docker target serves ONNX and
# TorchScript models through the Python backend, from the staged copy deployer/shim.py writes
# (a generated model.py per version that runs the model with the image's onnxruntime / torch).
# Labels say what the image serves: triton-deployer.backends=python,
# triton-deployer.shim=onnxruntime,pytorch (through the Python backend) and
# triton-deployer.shim.versions=onnxruntime==1.20.1,torch==2.13.0+cpu.
#
# How: debootstrap a minimal Debian bookworm (from the apt mirror this machine uses), copy in
# the tritonserver 2.51 (= Triton 24.10) that PyPI's nvidia-pytriton wheel ships, pip-install
# the frameworks' wheels (resolved against the image's numpy, so numpy stays Debian's <2;
# byte-compiled), and `docker import` the result. Nothing is pulled from a registry. The
# frameworks cost ~700 MB (torch ~560 MB); --frameworks none builds the lean image (~270 MB).
#
# Caches (under --cache DIR): the nvidia-pytriton wheel, debootstrap's .deb files, the cleaned
# base root filesystem as a tarball, and the frameworks' wheels with the lock file pip's
# resolution left (frameworks/). An existing image tag is the cache between runs: the build is
# skipped unless --force.
#
# Needs: a reachable Docker engine (see .ci/start-docker.sh), PyPI through pip, python3 (reads
# the pins from deployer/shim.py), and root for the first build (debootstrap; installed with
# apt when missing). A rebuild from the cached base tarball needs no root.
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
FRAMEWORKS="all"

usage() {
    cat <<EOF
usage: $(basename "$0") [--tag TAG] [--force] [--cache DIR] [--mirror URL]
                        [--extra-packages PKG[,PKG...]] [--frameworks LIST] [--no-cache]

  --tag TAG          image tag (default: ${TAG})
  --force            rebuild even if TAG already exists in the engine
  --cache DIR        cache folder for the wheels, .debs and the base rootfs tarball
                     (default: \${XDG_CACHE_HOME:-\$HOME/.cache}/triton-deployer/image-build)
  --mirror URL       Debian mirror for debootstrap (default: the one apt uses here,
                     or \$DEBIAN_MIRROR)
  --extra-packages   more Debian packages for the image (comma separated)
  --frameworks LIST  backends served through the Python backend (deployer/shim.py), whose
                     pinned packages go into the image's Python: comma separated among
                     onnxruntime,pytorch, or all, or none (default: ${FRAMEWORKS})
  --no-cache         ignore the cached base rootfs tarball, the nvidia-pytriton wheel and
                     the frameworks' lock file (rebuild, fetch and resolve them again)
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
        --frameworks) FRAMEWORKS="${2?--frameworks needs a value}"; shift 2 ;;
        --frameworks=*) FRAMEWORKS="${1#*=}"; shift ;;
        --no-cache) NO_CACHE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "build_cpu_image: unknown argument: $1" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- the frameworks' pins
# deployer/shim.py FRAMEWORKS is the one place the pins live (the embedded runtime installs
# the same ones); next to this script in a checkout (plugins/docker -> deployer) and in an
# installed package (deployer_plugins/docker -> deployer) alike.
SHIM_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../deployer/shim.py"
PINS=""   # lines "backend requirement distribution"
case "$FRAMEWORKS" in
    none|"") FRAMEWORKS="" ;;
    *)
        command -v python3 >/dev/null 2>&1 || { echo "build_cpu_image: ERROR: python3 is needed to read the frameworks' pins from deployer/shim.py" >&2; exit 1; }
        [ -f "$SHIM_PY" ] || { echo "build_cpu_image: ERROR: no $SHIM_PY to read the frameworks' pins from (or pass --frameworks none)" >&2; exit 1; }
        PINS="$(python3 - "$SHIM_PY" "$FRAMEWORKS" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("deployer_shim", sys.argv[1])
shim = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shim)
known = shim.FRAMEWORKS
asked = [n.strip() for n in sys.argv[2].split(",") if n.strip()]
for name in (list(known) if asked == ["all"] else asked):
    if name not in known:
        sys.exit(f"build_cpu_image: --frameworks: unknown backend {name!r} "
                 f"(known: {', '.join(known)}, all, none)")
    print(name, known[name].requirement, known[name].distribution)
EOF
)" || exit 2
        FRAMEWORKS="$(printf '%s\n' "$PINS" | awk '{ print $1 }' | paste -sd, -)"
        ;;
esac

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
    # an image built before, or with other frameworks, is rebuilt: its label says which
    HAS="$(docker image inspect --format '{{ index .Config.Labels "triton-deployer.shim" }}' "$TAG" 2>/dev/null || true)"
    WANT="$([ -n "$PINS" ] && printf '%s' "$FRAMEWORKS" || true)"
    if [ "$HAS" = "$WANT" ] || { [ "$HAS" = "<no value>" ] && [ -z "$WANT" ]; }; then
        log "image ${TAG} already exists: nothing to do (use --force to rebuild)"
        exit 0
    fi
    log "image ${TAG} serves frameworks '${HAS}', not '${WANT}': rebuilding it"
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
PIP=()
find_pip() {   # find_pip WHAT : sets PIP
    [ "${#PIP[@]}" -eq 0 ] || return 0
    if python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
    elif command -v pip3 >/dev/null 2>&1; then PIP=(pip3)
    elif command -v pip >/dev/null 2>&1; then PIP=(pip)
    elif apt_install python3-pip; then PIP=(python3 -m pip)
    else die "pip is needed to download $1 (install python3-pip)"
    fi
}
if [ -z "$WHEEL" ]; then
    find_pip "nvidia-pytriton==${PYTRITON_VERSION}"
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

# ---------------------------------------------------------------- 3b. the frameworks
# The pinned packages (and what they depend on) go into the image Python's
# /usr/local/lib/python3.11/dist-packages, which comes before Debian's numpy on sys.path.
# pip resolves them once against the image's own numpy (so nothing can bring numpy 2), the
# result is kept as a lock file in the cache, and numpy itself is left out.
SHIM_VERSIONS=""   # distribution==version, comma separated, for the label
if [ -n "$PINS" ]; then
    find_pip "the frameworks' packages"
    [ "$NUMPY" != "?" ] || die "the base rootfs does not tell its numpy version; rebuild it with --no-cache"
    FW_DIR="$CACHE/frameworks"
    mkdir -p "$FW_DIR"
    FOR_IMAGE=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}")
    for minor in $(seq 36 -1 17); do   # bookworm's glibc is 2.36
        FOR_IMAGE+=(--platform "manylinux_2_${minor}_x86_64")
    done
    mapfile -t REQS < <(awk '{ print $2 }' <<<"$PINS")
    LOCK="$FW_DIR/$(printf '%s|' "${REQS[@]}" "$NUMPY" "$PYVER" | sha256sum | cut -c1-12).lock"
    [ "$NO_CACHE" -eq 0 ] || rm -f "$LOCK"
    PIPLOG="$WORK/pip.log"
    pip_for_image() {   # pip_for_image WHAT ARGS... : pip quietly, its last lines on failure
        local what="$1"; shift
        PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" --disable-pip-version-check "$@" >"$PIPLOG" 2>&1 \
            || { tail -n 15 "$PIPLOG" >&2; die "$what"; }
    }
    if [ ! -f "$LOCK" ]; then
        log "resolving ${REQS[*]} for Python ${PYVER} with the image's numpy ${NUMPY}"
        pip_for_image "pip cannot resolve ${REQS[*]} with numpy==${NUMPY} for Python ${PYVER}" \
            install --dry-run --ignore-installed --report "$WORK/resolved.json" \
            --target "$WORK/resolve" "${FOR_IMAGE[@]}" "${REQS[@]}" "numpy==${NUMPY}"
        python3 - "$WORK/resolved.json" >"$LOCK.tmp" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if item["metadata"]["name"].lower() != "numpy":   # the image keeps Debian's
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
EOF
        mv "$LOCK.tmp" "$LOCK"
    fi
    if ! "${PIP[@]}" --disable-pip-version-check download --quiet --no-deps --no-index --find-links "$FW_DIR" \
            "${FOR_IMAGE[@]}" --dest "$FW_DIR" -r "$LOCK" >/dev/null 2>&1; then
        log "downloading $(paste -sd' ' "$LOCK") from PyPI"
        pip_for_image "pip download of the frameworks' wheels failed" \
            download --no-deps "${FOR_IMAGE[@]}" --dest "$FW_DIR" -r "$LOCK"
    fi
    SITE="$OVL/usr/local/lib/python${PYVER}/dist-packages"
    pip_for_image "pip install of the frameworks into the image failed" \
        install --no-deps --no-index --find-links "$FW_DIR" --no-compile \
        --target "$SITE" "${FOR_IMAGE[@]}" -r "$LOCK"
    # Serving needs none of: console scripts (made for this machine's Python), torch's C++
    # headers, CMake files and test binaries, the packages' own test suites.
    rm -rf "$SITE/bin" "$SITE/torch/include" "$SITE/torch/share" "$SITE/torch/test"
    [ ! -d "$SITE/torch/bin" ] || find "$SITE/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +
    find "$SITE" -mindepth 2 -type d -name tests ! -path "$SITE/torch/*" -prune -exec rm -rf {} +
    # Byte-compile with a Python of the image's version, else every container would compile
    # torch's thousands of modules on its first model load.
    PY_SAME=""
    for py in "python${PYVER}" python3; do
        if [ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$PYVER" ]; then
            PY_SAME="$py"; break
        fi
    done
    if [ -n "$PY_SAME" ]; then
        # (exit 1 for torch's few test modules written for Python 3.12: never imported)
        "$PY_SAME" -m compileall -q -j 0 -d "/usr/local/lib/python${PYVER}/dist-packages" "$SITE" \
            >/dev/null || true
    else
        log "warning: no Python ${PYVER} here to byte-compile the frameworks: containers compile them on their first model load"
    fi
    while read -r _ _ dist; do
        version="$(awk -F'==' -v d="$dist" 'tolower($1) == d { print $2 }' "$LOCK")"
        [ -n "$version" ] || die "the lock $LOCK has no $dist"
        SHIM_VERSIONS="${SHIM_VERSIONS:+$SHIM_VERSIONS,}${dist}==${version}"
    done <<<"$PINS"
    echo "served through the Python backend (deployer/shim.py): ${FRAMEWORKS} with ${SHIM_VERSIONS}" >>"$OPT/BUILD_INFO"
    step_done "frameworks ${FRAMEWORKS} (${SHIM_VERSIONS}) in the image's Python ($(du -sh "$SITE" | cut -f1))"
fi

# ---------------------------------------------------------------- 4. import
# One archive = cached base + overlay appended (no extraction, no root needed here).
cp "$BASE_TAR" "$WORK/image.tar"
ADD=(./opt/tritonserver ./models)
# the frameworks: the entries of dist-packages, whose folder the base has (docker import
# refuses a path twice)
[ -z "$PINS" ] || mapfile -t -O 2 ADD < <(cd "$OVL" && find "./usr/local/lib/python${PYVER}/dist-packages" -mindepth 1 -maxdepth 1 | sort)
tar -C "$OVL" --numeric-owner --owner=0 --group=0 -rf "$WORK/image.tar" "${ADD[@]}"
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
    --change "LABEL org.opencontainers.image.title=tritonserver-cpu com.nvidia.tritonserver.version=${TRITON_VERSION} triton-deployer.backends=python triton-deployer.source=nvidia-pytriton==${PYTRITON_VERSION}${PINS:+ triton-deployer.shim=${FRAMEWORKS} triton-deployer.shim.versions=${SHIM_VERSIONS}}" \
    --change 'CMD ["tritonserver","--model-repository=/models"]' \
    --message "tritonserver ${TRITON_VERSION} CPU (python backend${PINS:+; ${FRAMEWORKS} through it}) from nvidia-pytriton ${PYTRITON_VERSION}" \
    "$WORK/image.tar" "$TAG" >/dev/null \
    || die "docker import failed"
step_done "imported as ${TAG}"
if [ -n "$PINS" ]; then   # the frameworks import in the image, next to Debian's numpy
    CHECK="import numpy; assert numpy.__version__ == '${NUMPY}', numpy.__version__"
    for dist in $(awk '{ print $3 }' <<<"$PINS"); do CHECK="$CHECK; import ${dist}"; done
    if ! out="$(docker run --rm --network none --entrypoint python3 "$TAG" -c "$CHECK" 2>&1)"; then
        docker image rm "$TAG" >/dev/null 2>&1 || true
        [ -z "$OLD_ID" ] || docker tag "$OLD_ID" "$TAG" >/dev/null 2>&1 || true
        die "the new image cannot import its frameworks (removed it): $(tail -n 1 <<<"$out")"
    fi
    step_done "checked: python3 -c 'import numpy, $(awk '{ print $3 }' <<<"$PINS" | paste -sd, - | sed 's/,/, /g')' in the image (numpy ${NUMPY})"
fi
# --force: drop the image the tag pointed at before, unless a container or another tag uses it
# (with the vfs storage driver every stale image costs its full size on disk).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect --format '{{.Id}}' "$TAG")" ]; then
    docker image rm "$OLD_ID" >/dev/null 2>&1 && log "removed the previous image ${OLD_ID:7:12}" || true
fi

SIZE="$(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
log "done: ${TAG} (${SIZE}); run: docker run --rm -p 8000:8000 -v REPO:/models:ro ${TAG}"
