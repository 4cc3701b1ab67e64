# Sourced by scripts/validate-*.sh: a Python tool from PyPI in its own venv, created on first use.
#
#   venv_tool VENV PACKAGE VERSION EXECUTABLE
#
# Installs PACKAGE==VERSION into VENV unless VENV/bin/EXECUTABLE is already there. When it cannot be
# installed (no PyPI), removes the half-made venv and exits the calling script with 75 (EX_TEMPFAIL): callers
# tell "could not check" from "checked and found invalid".
venv_tool() {
    local venv="$1" package="$2" version="$3" executable="$4"
    if [[ -x "$venv/bin/$executable" ]]; then
        return 0
    fi
    echo "==> installing $package $version into $venv"
    if ! python3 -m venv "$venv" \
        || ! "$venv/bin/pip" install --quiet --disable-pip-version-check --timeout 30 "$package==$version"; then
        rm -rf "$venv"
        echo "error: cannot install $package $version (is PyPI reachable?)" >&2
        exit 75
    fi
}
