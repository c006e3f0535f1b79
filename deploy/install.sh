#!/bin/sh
# The install steps of the loginguard image, in one place.
#
# deploy/Dockerfile runs these steps (and nothing else that installs Python
# code); deploy/install-check.sh runs the same steps, in the same order, in a
# temporary folder, and then starts the guard.  So what CI checks without a
# Docker engine is what the image build does.  A systemd host uses them too
# (see deploy/README.md).
#
#   install.sh wheels SRC WHEELS   build the loginguard wheel and every dependency's wheel
#   install.sh venv   WHEELS VENV  a virtualenv holding loginguard from WHEELS only (no network)
#   install.sh config SRC ETC      the container config and the shipped rules -> ETC
#
# SRC is the build context (a checkout); PYTHON picks the interpreter (default python3).
set -eu

# Resolved once: in the image PATH already starts with the venv's bin folder, which
# must not be picked up as "python3" once the venv step has created it.
PYTHON=$(command -v "${PYTHON:-python3}") || { echo "install.sh: no ${PYTHON:-python3} on PATH" >&2; exit 2; }

die() {
    echo "install.sh: $*" >&2
    exit 2
}

# wheels SRC WHEELS: build in a scratch copy, so the checkout (or the read-only
# bind mount in the Dockerfile) never gets a build/ or *.egg-info folder.
step_wheels() {
    src=$1
    out=$2
    [ -f "$src/pyproject.toml" ] || die "wheels: $src/pyproject.toml not found"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp "$src/pyproject.toml" "$scratch/"
    cp -R "$src/guard" "$scratch/guard"
    # pyproject.toml names README.md; LICENSE is packaged when present.
    for f in README.md LICENSE; do
        if [ -f "$src/$f" ]; then cp "$src/$f" "$scratch/"; fi
    done
    find "$scratch" -name __pycache__ -type d -prune -exec rm -rf {} +
    mkdir -p "$out"
    # Dependencies come as wheels too: the final stage installs with --no-index,
    # so it needs neither network access nor a compiler.
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$out" "$scratch"
    rm -rf "$scratch"
    trap - EXIT
    ls "$out"/loginguard-*.whl >/dev/null 2>&1 || die "wheels: no loginguard wheel in $out"
}

# venv WHEELS VENV: no pip inside the runtime venv (the base interpreter's pip
# installs into it with --python), so the running guard has no package manager.
step_venv() {
    wheels=$1
    venv=$2
    [ -d "$wheels" ] || die "venv: $wheels is not a folder"
    "$PYTHON" -m venv --without-pip "$venv"
    # Byte-code is compiled now (pip's default): the image's file system is
    # read-only at run time, so Python could not write it later.
    "$PYTHON" -m pip --python "$venv/bin/python" install --quiet --no-index --find-links "$wheels" loginguard
    # The smoke test of the install: every module `guard` imports must be there, so an
    # import of a package pyproject.toml does not declare fails the build, not the pod.
    "$venv/bin/guard" version || die "venv: the installed guard does not start (a dependency missing from pyproject.toml?)"
}

# config SRC ETC: guard.yaml and the rule packs.  Relative paths in guard.yaml
# are relative to the config file, so ETC keeps the checkout's layout
# (ETC/rules, ETC/rules/lists, ETC/geoip).  Rule regression tests stay out.
step_config() {
    src=$1
    etc=$2
    [ -f "$src/deploy/guard.docker.yaml" ] || die "config: $src/deploy/guard.docker.yaml not found"
    mkdir -p "$etc/rules" "$etc/geoip"
    cp "$src/deploy/guard.docker.yaml" "$etc/guard.yaml"
    for entry in "$src"/rules/*; do
        case ${entry##*/} in
            tests) ;;
            *) cp -R "$entry" "$etc/rules/" ;;
        esac
    done
    cp "$src/geoip/hosting-asns.txt" "$etc/geoip/hosting-asns.txt"
    # world-readable, owned by whoever installs (root in the image): the guard
    # reads its config but can never rewrite it.
    chmod -R u=rwX,go=rX "$etc"
}

[ $# -eq 3 ] || die "usage: install.sh wheels|venv|config ARG ARG"
step=$1
shift
case $step in
    wheels) step_wheels "$@" ;;
    venv) step_venv "$@" ;;
    config) step_config "$@" ;;
    *) die "unknown step: $step" ;;
esac
