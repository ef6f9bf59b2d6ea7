#!/bin/sh
# Runs the coverid CLI with the container's arguments (default: `serve`).
set -e
exec coverid "$@"
