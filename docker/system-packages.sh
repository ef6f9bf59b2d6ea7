#!/usr/bin/env bash
# The Debian packages `make run` (run), `make test` (test) or `make model` (model) needs, installed when missing.
# Quick when all are there; as root with apt-get it installs the missing ones; otherwise it names
# the one command to run and stops, so a new user's first `make test` never fails halfway.
set -euo pipefail

run_packages=(make g++ python3-venv python3-dev)
# test: fluidsynth and General MIDI soundfonts render the corpus the training tests use;
# the store tests start a real redis-server; the observability tests a real Prometheus (and promtool)
# and docker-compose, which validates docker-compose.yml without a Docker engine; chromium and its driver run the
# page at / in a real headless browser
test_packages=("${run_packages[@]}" fluidsynth fluid-soundfont-gm timgm6mb-soundfont redis-server prometheus docker-compose
               chromium chromium-driver)
# model: real recorded music (game soundtracks) the pitch student is distilled on
model_packages=("${test_packages[@]}" warzone2100-music wesnoth-1.16-music singularity-music)

case "${1:-}" in
  run) wanted=("${run_packages[@]}") ;;
  test) wanted=("${test_packages[@]}") ;;
  model) wanted=("${model_packages[@]}") ;;
  *) echo "usage: $0 run|test|model" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null; then
  echo "not a Debian/Ubuntu system: install the equivalents of ${wanted[*]} yourself, then run make again" >&2
  exit 1
fi
missing=()
for package in "${wanted[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "run:  sudo apt-get install -y ${missing[*]}" >&2
  echo "then run make again" >&2
  exit 1
fi
