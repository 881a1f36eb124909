#!/usr/bin/env bash
# Install edge-asd on an NVIDIA Jetson (JetPack 6 / L4T R36) as a systemd service.
#
#   sudo deploy/install-jetson.sh --bundle ./bundle --config ./config.yaml \
#        --mqtt-password-file ./mqtt_password --yes
#
# What it does, in order (each step is skipped when already done, so re-running it is safe
# and is how you upgrade):
#   checks      root, Jetson (/etc/nv_tegra_release), L4T/JetPack, CUDA (nvcc), TensorRT >= 10
#               (JetPack 6.1+; JetPack 6.0's TensorRT 8.6 stops the install)
#   packages    apt: libportaudio2 libsndfile1 python3-venv python3-dev build-essential
#               (the distribution's current versions, recorded in PREFIX/installed-versions.txt)
#   user        system user edge-asd in groups audio,video
#   venv        PREFIX/venv from the system python3 with --system-site-packages, so the
#               JetPack TensorRT bindings (python3-libnvinfer) are importable
#   pip         the project (--wheel or --source) with the jetson extra (pycuda, built here
#               against /usr/local/cuda), every package and every build tool at the exact
#               version of deploy/constraints.txt (copied to PREFIX/pip-constraints.txt;
#               --constraint and --build-constraint)
#   bundle      copied to /var/lib/edge-asd/bundle (kept when unchanged: its engine stays)
#   engine      edge-asd build-engine, run as edge-asd (minutes on the first run)
#   config      /etc/edge-asd/config.yaml from --config or the example; never overwritten
#   secrets     /etc/edge-asd/mqtt_password (root 0600, loaded by systemd LoadCredential=)
#   unit        /etc/systemd/system/edge-asd.service, daemon-reload, enable, (re)start
#
# --dry-run prints every step and command and changes nothing (and runs anywhere).
# --uninstall removes the service, venv, user and config; the data in /var/lib/edge-asd
# (bundle, engines, outbox, evidence) is kept unless --purge.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"

SERVICE_USER=edge-asd
SERVICE_GROUPS=audio,video
UNIT_NAME=edge-asd.service
UNIT_SRC="$SCRIPT_DIR/edge-asd.service"
# Test hook, not for production: EDGE_ASD_INSTALL_ROOT puts every file the installer writes
# or checks under a scratch folder (tests/system/test_deploy.py runs the real install path that way,
# with the system commands replaced by recording fakes). EDGE_ASD_SYSTEM_PYTHON likewise.
ROOT=${EDGE_ASD_INSTALL_ROOT:-}
ROOT=${ROOT%/}
UNIT_DST=$ROOT/etc/systemd/system/$UNIT_NAME
DEFAULT_SRC="$SCRIPT_DIR/edge-asd.default"
DEFAULT_DST=$ROOT/etc/default/edge-asd
CONFIG_EXAMPLE="$SCRIPT_DIR/config.example.yaml"
# Exact versions of every pip package (and pip, setuptools, wheel): the same install everywhere.
CONSTRAINTS_SRC="$SCRIPT_DIR/constraints.txt"
# JetPack 6.0 ships TensorRT 8.6, which cannot build the exported graph; 6.1+ ships 10.3.
MIN_TENSORRT_MAJOR=10
ETC_DIR=$ROOT/etc/edge-asd
STATE_DIR=$ROOT/var/lib/edge-asd
CACHE_DIR=$ROOT/var/cache/edge-asd
NV_TEGRA_RELEASE=$ROOT/etc/nv_tegra_release
BUNDLE_DST=$STATE_DIR/bundle
CUDA_HOME_DEFAULT=$ROOT/usr/local/cuda
SYSTEM_PYTHON=${EDGE_ASD_SYSTEM_PYTHON:-/usr/bin/python3}
SAFE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
APT_PACKAGES=(libportaudio2 libsndfile1 python3-venv python3-dev python3-pip build-essential)

PREFIX=$ROOT/opt/edge-asd
BUNDLE=""
CONFIG=""
WHEEL=""
SOURCE=""
MQTT_PASSWORD_FILE=""
BUILD_ENGINE=1
START=1
ASSUME_YES=0
DRY_RUN=0
UNINSTALL=0
PURGE=0
ALLOW_NON_JETSON=0

IS_JETSON=0
STEP=0
WARNINGS=0

usage() {
    cat <<EOF
Usage: sudo $(basename "$0") [options]

Install:
  --bundle DIR              model bundle from 'edge-asd export' (required on first install)
  --config FILE             daemon config to install as $ETC_DIR/config.yaml
                            (default: the commented example; an existing file is never overwritten)
  --wheel PATH              install edge-asd from this wheel
  --source DIR              install edge-asd from this source tree (default: $REPO_DIR)
  --mqtt-password-file FILE MQTT password (first line), installed root-only for LoadCredential=
  --prefix DIR              where the venv goes (default: $PREFIX)
  --no-engine               do not build the TensorRT engine now (the daemon builds it at start)
  --no-start                enable the service but do not (re)start it
  --allow-non-jetson        install on a machine without JetPack (onnxruntime backend, no engine)
  --yes                     do not ask for confirmation
  --dry-run                 print every step and command, change nothing

Remove:
  --uninstall               remove service, venv, user and config; keep $STATE_DIR
  --purge                   with --uninstall: also delete $STATE_DIR and $CACHE_DIR

  -h, --help                this help
EOF
}

# --- output helpers ---------------------------------------------------------------------------

step() {
    STEP=$((STEP + 1))
    printf '\n==> [%d] %s\n' "$STEP" "$*"
}

info() { printf '    %s\n' "$*"; }

warn() {
    WARNINGS=$((WARNINGS + 1))
    printf 'WARNING: %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# A problem that stops a real install, but only warns in --dry-run so the plan can be shown
# on any machine (a workstation, CI).
fail_or_warn() {
    if ((DRY_RUN)); then
        warn "$* (dry run: continuing)"
    else
        die "$*"
    fi
}

# Print a command, then run it unless --dry-run. Arguments are quoted as the shell would
# need them, so a dry-run transcript can be pasted and run.
run() {
    local quoted
    printf -v quoted '%q ' "$@"
    printf '    + %s\n' "${quoted% }"
    if ((DRY_RUN)); then
        return 0
    fi
    "$@"
}

# Like run, but the command's own stdout is discarded (errors on stderr still show).
run_quiet() {
    local quoted
    printf -v quoted '%q ' "$@"
    printf '    + %s >/dev/null\n' "${quoted% }"
    if ((DRY_RUN)); then
        return 0
    fi
    "$@" >/dev/null
}

# Write stdin to a file (root-owned, given mode) unless --dry-run.
write_file() {
    local path=$1 mode=$2 owner=$3
    printf '    + write %s (mode %s, owner %s)\n' "$path" "$mode" "$owner"
    if ((DRY_RUN)); then
        cat >/dev/null
        return 0
    fi
    local tmp
    mkdir -p "$(dirname "$path")"
    tmp=$(mktemp "${path}.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

confirm() {
    local question=$1
    if ((ASSUME_YES || DRY_RUN)); then
        return 0
    fi
    if [[ ! -t 0 ]]; then
        die "$question: no terminal to ask on; pass --yes to proceed"
    fi
    local answer
    read -r -p "$question [y/N] " answer
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || die "aborted"
}

# as_service_user [run|run_quiet] CMD...: run CMD as the service user.
as_service_user() {
    local runner=run
    if [[ $1 == run || $1 == run_quiet ]]; then
        runner=$1
        shift
    fi
    if command -v runuser >/dev/null 2>&1; then
        "$runner" runuser -u "$SERVICE_USER" -- "$@"
    else
        "$runner" sudo -u "$SERVICE_USER" -- "$@"
    fi
}

# --- arguments --------------------------------------------------------------------------------

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --bundle) need_value "$@"; BUNDLE=$2; shift 2 ;;
            --config) need_value "$@"; CONFIG=$2; shift 2 ;;
            --wheel) need_value "$@"; WHEEL=$2; shift 2 ;;
            --source) need_value "$@"; SOURCE=$2; shift 2 ;;
            --mqtt-password-file) need_value "$@"; MQTT_PASSWORD_FILE=$2; shift 2 ;;
            --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
            --no-engine) BUILD_ENGINE=0; shift ;;
            --no-start) START=0; shift ;;
            --allow-non-jetson) ALLOW_NON_JETSON=1; shift ;;
            --yes | -y) ASSUME_YES=1; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            --purge) PURGE=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown option '$1'" ;;
        esac
    done
    if [[ -n $WHEEL && -n $SOURCE ]]; then
        die "give either --wheel or --source, not both"
    fi
    if ((PURGE && !UNINSTALL)); then
        die "--purge only goes with --uninstall"
    fi
    [[ $PREFIX == /* ]] || die "--prefix must be an absolute path, got '$PREFIX'"
    PREFIX=${PREFIX%/}
    VENV=$PREFIX/venv
    EDGE_ASD=$VENV/bin/edge-asd
}

# --- checks -----------------------------------------------------------------------------------

check_root() {
    step "Checking privileges"
    if [[ $(id -u) -ne 0 ]]; then
        fail_or_warn "run as root (sudo $0 ...): the install creates a user and a systemd service"
    else
        info "running as root"
    fi
}

# L4T release from /etc/nv_tegra_release, e.g. "# R36 (release), REVISION: 4.3, ..." -> 36.4.3
l4t_version() {
    local line major revision
    line=$(head -n 1 "$NV_TEGRA_RELEASE")
    major=$(sed -n 's/^# R\([0-9]*\).*/\1/p' <<<"$line")
    revision=$(sed -n 's/.*REVISION: \([0-9.]*\).*/\1/p' <<<"$line")
    printf '%s.%s' "${major:-?}" "${revision:-?}"
}

check_platform() {
    step "Checking the platform (Jetson, L4T/JetPack, CUDA, TensorRT)"
    if [[ -f $NV_TEGRA_RELEASE ]]; then
        IS_JETSON=1
        local l4t major jetpack
        l4t=$(l4t_version)
        major=${l4t%%.*}
        case $major in
            35) jetpack="5.x" ;;
            36) jetpack="6.x" ;;
            38) jetpack="7.x" ;;
            *) jetpack="unknown" ;;
        esac
        info "Jetson: L4T R$l4t (JetPack $jetpack)"
        if [[ $major != 36 ]]; then
            warn "edge-asd is tested on JetPack 6 (L4T R36, TensorRT 10.3, Python 3.10); L4T R$l4t may need other versions"
        fi
        if [[ -r /proc/device-tree/model ]]; then
            info "model: $(tr -d '\0' </proc/device-tree/model)"
        fi
    elif ((ALLOW_NON_JETSON)); then
        warn "not a Jetson ($NV_TEGRA_RELEASE missing): installing for the onnxruntime backend, no engine"
        BUILD_ENGINE=0
        return 0
    else
        fail_or_warn "not a Jetson: $NV_TEGRA_RELEASE is missing. Install JetPack (L4T), or pass --allow-non-jetson to run on the CPU with onnxruntime"
        # Only reached in --dry-run: show the plan a Jetson would get.
        IS_JETSON=1
        info "dry run: showing the steps a Jetson install takes"
    fi

    if [[ -x $CUDA_HOME_DEFAULT/bin/nvcc ]]; then
        info "CUDA: $("$CUDA_HOME_DEFAULT/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    else
        fail_or_warn "CUDA toolkit not found ($CUDA_HOME_DEFAULT/bin/nvcc): pycuda is built on the device and needs it. Install it with: sudo apt install nvidia-jetpack (or cuda-toolkit-12-6)"
    fi

    local trt_deb trt_py
    trt_deb=$(dpkg-query -W -f='${Package} ${Version}\n' 'libnvinfer[0-9]*' 2>/dev/null | awk 'NF==2 && $2 != "" {print; exit}' || true)
    trt_py=$("$SYSTEM_PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)
    if [[ -n $trt_deb ]]; then
        info "TensorRT library: $trt_deb"
        require_tensorrt_10 "${trt_deb#* }" "library $trt_deb"
    else
        fail_or_warn "TensorRT is not installed (no libnvinfer package). Install it with: sudo apt install nvidia-jetpack (or nvidia-tensorrt)"
    fi
    if [[ -n $trt_py ]]; then
        info "TensorRT Python bindings: $trt_py (system $SYSTEM_PYTHON)"
        require_tensorrt_10 "$trt_py" "Python bindings $trt_py"
    else
        fail_or_warn "the TensorRT Python bindings are missing for $SYSTEM_PYTHON. Install them with: sudo apt install python3-libnvinfer"
    fi
}

# require_tensorrt_10 VERSION WHAT: stop (also in a dry run) when TensorRT is older than 10. A
# warning here used to end in a daemon that cannot build its engine and an error telling the
# user to re-export a bundle that is fine.
require_tensorrt_10() {
    local version=$1 what=$2 major
    major=${version%%.*}
    major=${major##*:} # a Debian epoch ("1:8.6.2...")
    if [[ $major =~ ^[0-9]+$ ]] && ((major < MIN_TENSORRT_MAJOR)); then
        die "TensorRT $what is too old: edge-asd needs TensorRT $MIN_TENSORRT_MAJOR or newer, which comes with JetPack 6.1 or newer (JetPack 6.0 ships TensorRT 8.6). Upgrade the Jetson to JetPack 6.1+ (L4T R36.4; see docs/deploy.md), then run this installer again"
    fi
}

check_python() {
    step "Checking the system Python"
    if [[ ! -x $SYSTEM_PYTHON ]]; then
        fail_or_warn "$SYSTEM_PYTHON not found: install python3 (JetPack 6 ships Python 3.10)"
        return 0
    fi
    local version
    version=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if "$SYSTEM_PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        info "Python $version ($SYSTEM_PYTHON)"
    else
        fail_or_warn "edge-asd needs Python >= 3.10; $SYSTEM_PYTHON is $version (JetPack 6 or newer ships 3.10)"
    fi
}

check_inputs() {
    step "Checking the inputs"
    if [[ -n $BUNDLE ]]; then
        [[ -d $BUNDLE ]] || die "--bundle $BUNDLE is not a directory"
        [[ -f $BUNDLE/model.json ]] || die "--bundle $BUNDLE has no model.json: pass the folder written by 'edge-asd export'"
        if [[ ! -f $BUNDLE/model.onnx && ! -f $BUNDLE/model_cpu.onnx ]]; then
            die "--bundle $BUNDLE has no model.onnx: re-run 'edge-asd export'"
        fi
        BUNDLE=$(cd "$BUNDLE" && pwd)
        info "bundle: $BUNDLE"
    elif [[ -f $BUNDLE_DST/model.json ]]; then
        info "bundle: keeping the installed $BUNDLE_DST"
    else
        fail_or_warn "no bundle installed yet: pass --bundle DIR (the folder written by 'edge-asd export')"
    fi
    if [[ -n $CONFIG ]]; then
        [[ -f $CONFIG ]] || die "--config $CONFIG not found"
        info "config: $CONFIG"
    fi
    if [[ -n $MQTT_PASSWORD_FILE ]]; then
        [[ -f $MQTT_PASSWORD_FILE ]] || die "--mqtt-password-file $MQTT_PASSWORD_FILE not found"
    fi
    if [[ -n $WHEEL ]]; then
        [[ -f $WHEEL ]] || die "--wheel $WHEEL not found"
        WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
        info "package: wheel $WHEEL"
    else
        SOURCE=${SOURCE:-$REPO_DIR}
        [[ -f $SOURCE/pyproject.toml ]] || die "--source $SOURCE has no pyproject.toml: pass the edge-asd source tree or --wheel"
        SOURCE=$(cd "$SOURCE" && pwd)
        info "package: source tree $SOURCE"
    fi
    [[ -f $UNIT_SRC ]] || die "$UNIT_SRC is missing: run the script from an edge-asd checkout"
    [[ -f $CONSTRAINTS_SRC ]] || die "$CONSTRAINTS_SRC is missing: run the script from an edge-asd checkout"
}

# --- install steps ----------------------------------------------------------------------------

service_active() {
    command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$UNIT_NAME" 2>/dev/null
}

stop_running_service() {
    step "Stopping the running service (it is restarted at the end)"
    if service_active; then
        run systemctl stop "$UNIT_NAME"
    else
        info "$UNIT_NAME is not running"
    fi
}

install_packages() {
    step "Installing system packages (${APT_PACKAGES[*]})"
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        info "all installed"
        return 0
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

create_user() {
    step "Creating the service user $SERVICE_USER (groups $SERVICE_GROUPS)"
    if getent passwd "$SERVICE_USER" >/dev/null; then
        info "user $SERVICE_USER exists; making sure it is in $SERVICE_GROUPS"
        run usermod --append --groups "$SERVICE_GROUPS" "$SERVICE_USER"
    else
        run useradd --system --user-group --groups "$SERVICE_GROUPS" \
            --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
            --comment "edge-asd anomalous sound monitor" "$SERVICE_USER"
    fi
}

create_dirs() {
    step "Creating $ETC_DIR, $STATE_DIR and $CACHE_DIR"
    # Config: root writes, the service reads (group), nobody else (broker credentials).
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$CACHE_DIR"
}

create_venv() {
    step "Creating the virtual environment $VENV (system Python, --system-site-packages)"
    if [[ -x $VENV/bin/python ]]; then
        info "exists: $VENV"
        return 0
    fi
    run install -d -m 0755 "$PREFIX"
    # --system-site-packages: JetPack's TensorRT bindings live in the system dist-packages
    # and cannot be pip-installed on a Jetson.
    run "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
    # pip itself at the pinned version too. No --build-constraint here: the venv's bundled pip
    # (22.x on JetPack 6) predates it, and pip is a wheel, so nothing is built.
    run "$VENV/bin/python" -m pip install --constraint "$CONSTRAINTS_SRC" --upgrade pip
}

pip_install() {
    local extra="[onnx]" target constraints=$PREFIX/pip-constraints.txt
    if ((IS_JETSON)); then
        extra="[jetson]"
    fi
    if [[ -n $WHEEL ]]; then
        target=$WHEEL
    else
        target=$SOURCE
    fi
    step "Installing edge-asd${extra} into $VENV from $target"
    # Every package at the exact version of deploy/constraints.txt (numpy 1.x among them:
    # TensorRT 10.3's bindings on JetPack 6 are built against NumPy 1.x). The copy next to the
    # venv is the record of what this install asked for, and what a manual pip must use.
    write_file "$constraints" 0644 root:root <"$CONSTRAINTS_SRC"
    # --constraint pins what is installed into the venv; --build-constraint pins the isolated
    # build environments (pycuda's setuptools, wheel and numpy, edge-asd's setuptools and wheel).
    # Since pip 26.2 constraints files, PIP_CONSTRAINT included, no longer reach those, so
    # without it pycuda would be compiled against the newest numpy and setuptools of the day.
    local pip=("$VENV/bin/python" -m pip install --constraint "$constraints" --build-constraint "$constraints")
    # pycuda has no aarch64 wheel: it compiles against the device's CUDA, so nvcc and the
    # headers must be found.
    local cuda_env=(env "PATH=$CUDA_HOME_DEFAULT/bin:$SAFE_PATH" "CUDA_ROOT=$CUDA_HOME_DEFAULT"
        "CUDA_HOME=$CUDA_HOME_DEFAULT" "CPATH=$CUDA_HOME_DEFAULT/include"
        "LIBRARY_PATH=$CUDA_HOME_DEFAULT/lib64")
    run "${cuda_env[@]}" "${pip[@]}" "${target}${extra}"
    # Same version number, new build (a re-install from a changed tree): replace the package
    # itself without touching its dependencies (pycuda's build takes minutes).
    run "${pip[@]}" --force-reinstall --no-deps "$target"
    run "$EDGE_ASD" version
    if ((IS_JETSON)); then
        run "$VENV/bin/python" -c 'import tensorrt, pycuda.driver; print("tensorrt", tensorrt.__version__)'
    fi
    record_versions
}

# apt packages are not pinned to exact versions: Ubuntu's archive keeps only the current
# (security-patched) build of a package, so an exact pin would break every install after the
# next update. What was installed is written down instead, next to the pip constraints.
record_versions() {
    local manifest=$PREFIX/installed-versions.txt pkg
    {
        printf '# what install-jetson.sh installed, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        for pkg in "${APT_PACKAGES[@]}"; do
            dpkg-query -W -f='apt ${Package}=${Version}\n' "$pkg" 2>/dev/null || printf 'apt %s=(not installed)\n' "$pkg"
        done
        dpkg-query -W -f='apt ${Package}=${Version}\n' 'libnvinfer[0-9]*' 2>/dev/null || true
        "$VENV/bin/python" -m pip freeze --all 2>/dev/null | sed 's/^/pip /' || true
    } | write_file "$manifest" 0644 root:root
}

install_bundle() {
    step "Installing the model bundle into $BUNDLE_DST"
    if [[ -z $BUNDLE ]]; then
        info "no --bundle given: keeping the installed bundle"
        return 0
    fi
    # An unchanged bundle keeps its built engine (engines/ is ignored in the comparison).
    if [[ -d $BUNDLE_DST ]] && diff -rq --exclude=engines "$BUNDLE" "$BUNDLE_DST" >/dev/null 2>&1; then
        info "unchanged: keeping $BUNDLE_DST and its engines"
        return 0
    fi
    # Copy next to the target, then swap, so a daemon never sees a half-copied bundle.
    run rm -rf "$BUNDLE_DST.new" "$BUNDLE_DST.old"
    run cp -a "$BUNDLE" "$BUNDLE_DST.new"
    run rm -rf "$BUNDLE_DST.new/engines"
    run chown -R "$SERVICE_USER:$SERVICE_USER" "$BUNDLE_DST.new"
    if [[ -e $BUNDLE_DST ]]; then
        run mv "$BUNDLE_DST" "$BUNDLE_DST.old"
    fi
    run mv "$BUNDLE_DST.new" "$BUNDLE_DST"
    run rm -rf "$BUNDLE_DST.old"
}

build_engine() {
    step "Building the TensorRT engine (edge-asd build-engine, as $SERVICE_USER)"
    if ((!BUILD_ENGINE)); then
        info "skipped (--no-engine or not a Jetson): the daemon builds or falls back at start"
        return 0
    fi
    info "this takes a few minutes on the first run; a cached engine is reused"
    as_service_user env "PATH=$CUDA_HOME_DEFAULT/bin:$SAFE_PATH" \
        "CUDA_CACHE_PATH=$CACHE_DIR/cuda" "HOME=$STATE_DIR" \
        "$EDGE_ASD" build-engine "$BUNDLE_DST"
}

install_config() {
    step "Installing the configuration $ETC_DIR/config.yaml"
    CONFIG_FROM_EXAMPLE=0
    if [[ -f $ETC_DIR/config.yaml ]]; then
        info "exists: keeping $ETC_DIR/config.yaml (never overwritten)"
        if [[ -n $CONFIG ]] && ! cmp -s "$CONFIG" "$ETC_DIR/config.yaml"; then
            warn "--config $CONFIG differs from the installed $ETC_DIR/config.yaml, which was kept; copy it by hand if you mean to replace it"
        fi
    elif [[ -n $CONFIG ]]; then
        run install -m 0640 -o root -g "$SERVICE_USER" "$CONFIG" "$ETC_DIR/config.yaml"
    else
        CONFIG_FROM_EXAMPLE=1
        run install -m 0640 -o root -g "$SERVICE_USER" "$CONFIG_EXAMPLE" "$ETC_DIR/config.yaml"
        warn "installed the example config: edit $ETC_DIR/config.yaml (audio device, streams, broker) before starting"
    fi
    if [[ ! -f $DEFAULT_DST && -f $DEFAULT_SRC ]]; then
        run install -D -m 0644 -o root -g root "$DEFAULT_SRC" "$DEFAULT_DST"
    fi
}

install_secret() {
    step "Installing the MQTT password $ETC_DIR/mqtt_password (root 0600, systemd credential)"
    if [[ -n $MQTT_PASSWORD_FILE ]]; then
        run install -m 0600 -o root -g root "$MQTT_PASSWORD_FILE" "$ETC_DIR/mqtt_password"
    elif [[ -f $ETC_DIR/mqtt_password ]]; then
        info "exists: keeping it"
        run chmod 0600 "$ETC_DIR/mqtt_password"
    else
        # LoadCredential= needs the file to exist; empty means no password (anonymous broker).
        printf '' | write_file "$ETC_DIR/mqtt_password" 0600 root:root
        info "empty: no password (write one there and restart the service to use one)"
    fi
}

install_unit() {
    step "Installing the systemd unit $UNIT_DST"
    # The unit names /opt/edge-asd; a different --prefix is written into the copy.
    sed "s|/opt/edge-asd/|$PREFIX/|g" "$UNIT_SRC" | write_file "$UNIT_DST" 0644 root:root
    run systemctl daemon-reload
}

enable_service() {
    step "Enabling and starting $UNIT_NAME"
    if ((!START)) || ((CONFIG_FROM_EXAMPLE)); then
        run systemctl enable "$UNIT_NAME"
        info "not started: edit $ETC_DIR/config.yaml, then: sudo systemctl start $UNIT_NAME"
        return 0
    fi
    # Validate the config as the service will read it, so a typo is reported here and not
    # as a restart loop.
    if ! as_service_user run_quiet "$EDGE_ASD" config check "$ETC_DIR/config.yaml"; then
        run systemctl enable "$UNIT_NAME"
        die "$ETC_DIR/config.yaml is not valid (see above): fix it, then: sudo systemctl start $UNIT_NAME"
    fi
    run systemctl enable "$UNIT_NAME"
    # restart, not start: a re-install must pick up the new package, bundle and unit.
    run systemctl restart "$UNIT_NAME"
    if ((!DRY_RUN)); then
        sleep 2
        systemctl --no-pager --lines=15 status "$UNIT_NAME" || true
    fi
    info "follow it with: journalctl -u $UNIT_NAME -f"
}

do_install() {
    check_root
    check_platform
    check_python
    check_inputs
    confirm "Install edge-asd into $PREFIX and enable $UNIT_NAME?"
    stop_running_service
    install_packages
    create_user
    create_dirs
    create_venv
    pip_install
    install_bundle
    build_engine
    install_config
    install_secret
    install_unit
    enable_service
}

# --- uninstall --------------------------------------------------------------------------------

do_uninstall() {
    check_root
    local what="the service, $VENV, user $SERVICE_USER and $ETC_DIR"
    if ((PURGE)); then
        what="$what, and ALL DATA in $STATE_DIR and $CACHE_DIR"
    fi
    confirm "Remove $what?"

    step "Stopping and disabling $UNIT_NAME"
    if [[ -f $UNIT_DST ]]; then
        run systemctl disable --now "$UNIT_NAME"
        run rm -f "$UNIT_DST"
        run systemctl daemon-reload
        run systemctl reset-failed "$UNIT_NAME"
    else
        info "not installed"
    fi

    step "Removing $PREFIX"
    if [[ -d $PREFIX ]]; then
        run rm -rf "$PREFIX"
    else
        info "not there"
    fi

    step "Removing the configuration $ETC_DIR and $DEFAULT_DST"
    if [[ -d $ETC_DIR ]]; then
        run rm -rf "$ETC_DIR"
    else
        info "not there"
    fi
    if [[ -f $DEFAULT_DST ]]; then
        run rm -f "$DEFAULT_DST"
    fi

    step "Removing the service user $SERVICE_USER"
    if getent passwd "$SERVICE_USER" >/dev/null; then
        run userdel "$SERVICE_USER"
    else
        info "no such user"
    fi

    step "Data in $STATE_DIR and $CACHE_DIR"
    if ((PURGE)); then
        run rm -rf "$STATE_DIR" "$CACHE_DIR"
    else
        info "kept (bundle, engines, outbox, evidence); --purge deletes them"
        info "systemd gives $STATE_DIR back to the service user on the next install (StateDirectory=)"
    fi
}

main() {
    parse_args "$@"
    if ((DRY_RUN)); then
        echo "DRY RUN: nothing is changed; these are the steps and commands a real run takes."
    fi
    if [[ -n $ROOT ]]; then
        echo "TEST ROOT: files go under $ROOT (EDGE_ASD_INSTALL_ROOT)"
    fi
    if ((UNINSTALL)); then
        do_uninstall
    else
        do_install
    fi
    echo
    if ((DRY_RUN)); then
        echo "Dry run finished ($WARNINGS warning(s))."
    elif ((UNINSTALL)); then
        echo "edge-asd removed."
    else
        echo "edge-asd installed ($WARNINGS warning(s)). Status: systemctl status $UNIT_NAME"
    fi
}

main "$@"
