# Shared set-up for scripts/run, scripts/test and scripts/bench: installs what is missing.
# Sourced, not run. Needs root (or sudo) only when a Debian package is missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export GATEWAY_SHARED="${GATEWAY_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
# the shared models where they are beside the checkout; an installation uses its own models/
if [ -z "${GATEWAY_MODELS_DIR:-}" ] && [ -d "$GATEWAY_SHARED/models" ]; then
    export GATEWAY_MODELS_DIR="$GATEWAY_SHARED/models"
fi

_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_system_packages() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        _as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export PATH="$PATH:/usr/sbin"
}

# Installs the project (with its dev tools) into a virtualenv; extra arguments go to pip, e.g.
# "-c constraints.txt" for the versions the suite last passed with.
install_packages() {
    local venv="$1"; shift
    # A failed pip is an error even when an older install still imports: ensure_venv would
    # otherwise stamp the venv as holding versions it does not, and never try again.
    _pip "$venv" "$@" -e "$ROOT[dev]"
    # dc09-spt (a real SIA DC-09 transmitter, used as a test peer) declares pycrypto, which
    # does not build on current Python; pycryptodome provides the same Crypto namespace.
    _pip "$venv" --no-deps "$@" "dc09-spt==0.0.4" "pycryptodome>=3.20"
    "$venv/bin/python" -c 'import gateway' || { echo "pip install failed" >&2; exit 1; }
}

# pip install, quiet, without the warnings this machine's pip configuration may print; exits
# the script when pip fails.
_pip() {
    local venv="$1"; shift
    local status=0
    "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location" || true; } || status=$?
    if [ "$status" -ne 0 ]; then
        echo "pip install failed (exit $status); nothing is marked installed, run again" >&2
        exit 1
    fi
}

ensure_venv() {
    local stamp="$VENV/.installed" want
    want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
    if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
        # no pip: a venv made without python3-venv, or one interrupted while pip went in
        python3 -m venv --clear "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "installing Python packages into $VENV"
        install_packages "$VENV" -c "$ROOT/constraints.txt"
        echo "$want" >"$stamp"
    fi
}
