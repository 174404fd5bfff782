#!/usr/bin/env sh
# Build (and optionally push) the project images listed in infra/images.yaml.
#   infra/build.sh [--push]      HLLM_IMAGE=registry/name overrides the repository
set -eu
cd "$(dirname "$0")/.."
repo="${HLLM_IMAGE:-ghcr.io/hllm-platform/hllm}"
for tag in cpu cuda; do
  docker build -f "infra/Dockerfile.$tag" -t "$repo:$tag" .
  if [ "${1:-}" = "--push" ]; then docker push "$repo:$tag"; fi
done
