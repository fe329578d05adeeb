#!/usr/bin/env bash
# Download the wheels that the lent GPU machine's image lacks into .whl/ (git-ignored),
# for bench/device_run.sh: NeMo's ASR collection and voxgraph's Ray-free code.
#
#   scripts/device_wheels.sh                      # CPython 3.12, manylinux x86_64 -> .whl/
#   scripts/device_wheels.sh --python 3.11 --dest /tmp/whl311   # the same list for a CPU proof
#   scripts/device_wheels.sh --list               # print the pinned list and exit
#   scripts/device_wheels.sh --image              # what the image already has (not carried)
#
# The image (/work/.library/device/KINDS.md) has Python 3.12, torch 2.11 (CUDA 13), numpy,
# scipy, lightning, transformers, sentencepiece, pandas, pyarrow, scikit-learn, numba,
# huggingface-hub, onnx, tensorboard, cuda-bindings, pyyaml, ... but no Ray, no NeMo, and
# none of the packages below; nothing can be installed from a registry there. The list was
# found by importing `nemo.collections.asr.models`, building/loading the three models and
# running the runners, the audio decoder and the pipeline walk in a Python with only the
# image's packages (see bench/RESULTS.md, "On a GPU"). Versions are the ones .venv runs.
# Keep one version of each: two of one name stop the whole install there.
set -euo pipefail

WHEELS=(
  nemo_toolkit==3.0.0
  # NeMo core / common
  hydra-core==1.3.2
  omegaconf==2.3.0
  antlr4-python3-runtime==4.9.3 # sdist only on PyPI: built here as a pure-Python wheel
  lightning==2.4.0              # NeMo 3.0 needs lightning<=2.4.0; the image's may be newer
  nv-one-logger-core==2.3.1
  nv-one-logger-training-telemetry==2.3.1
  nv-one-logger-pytorch-lightning-integration==2.3.1
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  StrEnum==0.4.15
  overrides==7.7.0
  toml==0.10.2
  webdataset==1.0.2
  braceexpand==0.1.7
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  # NeMo ASR
  lhotse==1.33.0
  intervaltree==3.2.1
  cytoolz==1.2.0
  kaldialign==0.12.0
  librosa==0.11.0
  decorator==5.3.1
  pooch==1.9.0
  platformdirs==4.14.8
  soundfile==0.14.0 # bundles libsndfile
  cffi==2.1.1
  soxr==1.1.0
  # voxgraph (audio decoding, settings, schemas)
  av==18.1.0 # bundles FFmpeg: 34 MiB, the bulk of the total
  pydantic-settings==2.16.3
  python-dotenv==1.2.4
)
SDIST_ONLY=(antlr4-python3-runtime)
# What the image already has that this path imports (KINDS.md's list, read 2026-11-17;
# versions there differ): tests/test_bench_smoke.py checks that every third-party import
# of bench/gpu.py's Ray-free path is in WHEELS or here.
IMAGE_HAS=(
  torch numpy scipy pyyaml lightning transformers sentencepiece huggingface-hub pandas
  pyarrow scikit-learn numba llvmlite onnx tensorboard cuda-bindings fsspec tqdm wrapt
  setuptools einops torchmetrics sacrebleu joblib msgpack lazy-loader packaging requests
  typing-extensions filelock jinja2 xxhash aiohttp protobuf safetensors tokenizers
)

PY_VERSION=3.12
DEST=.whl
LIMIT_MIB=55
cd "$(dirname "$0")/.." # paths are relative to the repository root
if [ -z "${PIP:-}" ]; then
  if [ -x .venv/bin/python ]; then PIP=".venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi

while [ $# -gt 0 ]; do
  case $1 in
    --python) PY_VERSION=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    --limit-mib) LIMIT_MIB=$2; shift 2 ;;
    --list) printf '%s\n' "${WHEELS[@]}"; exit 0 ;;
    --image) printf '%s\n' "${IMAGE_HAS[@]}"; exit 0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

binary=() sdist=()
for w in "${WHEELS[@]}"; do
  name=${w%%==*}
  if [[ " ${SDIST_ONLY[*]} " == *" $name "* ]]; then sdist+=("$w"); else binary+=("$w"); fi
done

quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
quiet $PIP download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" -d "$tmp" "${binary[@]}"
# Pure-Python sdists: one wheel works on every CPython 3.
quiet $PIP wheel -q --no-deps -w "$tmp" "${sdist[@]}"
for f in "$tmp"/*.whl; do
  case $(basename "$f") in
    *-none-any.whl | *-manylinux*x86_64*.whl) ;;
    *) echo "not a Linux x86-64 or pure wheel: $f" >&2; exit 1 ;;
  esac
done

n=$(ls "$tmp"/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "expected ${#WHEELS[@]} wheels, got $n" >&2
  exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
mv "$tmp"/*.whl "$DEST"/
ls -l "$DEST" | awk 'NR > 1 { printf "%10.2f MiB  %s\n", $5 / 1048576, $9 }' | sort -n
total=$(cat "$DEST"/*.whl | wc -c)
printf '%d wheels for CPython %s, %.1f MiB in %s (limit %s MiB; the tree travels too)\n' \
  "$n" "$PY_VERSION" "$(awk "BEGIN { print $total / 1048576 }")" "$DEST" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "over the limit" >&2
  exit 1
fi
