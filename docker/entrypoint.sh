#!/bin/sh
# Runs the coverid CLI with the container's arguments (the service's `serve` command comes with the HTTP service).
set -e
exec coverid "$@"
