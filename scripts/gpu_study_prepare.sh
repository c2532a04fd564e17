#!/usr/bin/env bash
# Prepare the GPU run of issue 10 (scripts/gpu_study.sh) HERE, on a machine with network to PyPI: download the
# wheels that the GPU machine lacks (nnunetv2 as pyproject.toml pins it, and its dependencies except torch,
# torchvision, triton, the nvidia-* CUDA packages and what that machine's image already holds), build the
# nnunet_stipple wheel, and pack them with the raw Dataset102_BTCVLowres into parts of at most --max-mib MiB
# under .gpu_bundle/ (git-ignored; each part is carried to the machine by one call). Prints the calls to make.
#
#   bash scripts/gpu_study_prepare.sh [--python-version 3.12] [--max-mib 56] [--dataset DIR] [--out DIR]
#                                      [--python PY]
#
# The GPU machine (.library/device/KINDS.md, nvidia-h200): no network, python3 = Python 3.12 with torch (2.11
# when last seen), torchvision, timm, numpy, scipy, scikit-image, scikit-learn, pandas, matplotlib, seaborn,
# tifffile, requests, einops, tqdm, pyyaml, rich, httpx, msgpack, ... gpu_study.sh installs every bundled wheel
# with `pip install --no-index --no-deps` into a venv that sees that python's packages, so torch is never
# replaced, and then checks imports and the declared requirements (a missing one is named there).
# Versions: those of the environment that runs the tests here (--python, default .venv/bin/python), so the
# machine runs what the test suite ran; nnunetv2 as pyproject.toml pins it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYVER=3.12
MAX_MIB=56
DATASET_DIR=$REPO/../shared/data/Dataset102_BTCVLowres
OUTDIR=$REPO/.gpu_bundle
PY=$REPO/.venv/bin/python
[[ -x $PY ]] || PY=python3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python-version) PYVER=$2; shift 2 ;;
    --max-mib) MAX_MIB=$2; shift 2 ;;
    --dataset) DATASET_DIR=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_study_prepare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -f $DATASET_DIR/dataset.json ]] || { echo "gpu_study_prepare.sh: no dataset at $DATASET_DIR" >&2; exit 2; }
DATASET_DIR=$(cd "$DATASET_DIR" && pwd -P)
DATASET_NAME=$(basename "$DATASET_DIR")
case "$OUTDIR" in /*) ;; *) OUTDIR=$REPO/$OUTDIR ;; esac
if [[ $OUTDIR == "$REPO"/* ]] && ! git check-ignore -q "$OUTDIR"; then
  echo "gpu_study_prepare.sh: $OUTDIR is not git-ignored; the bundle (wheels, dataset) must never be committed" >&2
  exit 2
fi

# What the GPU machine lacks (its image holds the rest, see the header). imagecodecs (TIFF codecs, declared by
# nnunetv2 but imported by nothing that runs here, ~20 MB) and the argparse backport are left out on purpose.
# timm: dynamic-network-architectures 0.4.4 wants timm<1.0.23, so this one shadows the machine's. setuptools and
# wheel: to build nnunet_stipple there from the checkout when its sources changed after this bundle was made.
PACKAGES=(
  nnunetv2 acvl-utils dynamic-network-architectures batchgenerators batchgeneratorsv2 timm
  blosc2 ndindex numexpr pydantic pydantic-core annotated-types typing-inspection typing-extensions
  h2 hpack hyperframe connected-components-3d simpleitk nibabel monai yacs graphviz future
  unittest2 traceback2 linecache2
  setuptools wheel
)
NNUNET_SPEC=$("$PY" - <<'PY'
import re
deps = open("pyproject.toml").read().split("dependencies = [", 1)[1].split("]", 1)[0]
print(re.search(r'"(nnunetv2[^"]*)"', deps).group(1).replace(" ", ""))
PY
)
mapfile -t SPECS < <("$PY" - "$NNUNET_SPEC" "${PACKAGES[@]}" <<'PY'
import importlib.metadata as md, sys
nnunet, names = sys.argv[1], sys.argv[2:]
for n in names:
    if n == "nnunetv2":
        print(nnunet)          # as pyproject.toml pins it
        continue
    try:
        print(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        print(n)
PY
)

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bundle.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/wheels" "$STAGE/sdist" "$STAGE/items"
PIP=("$PY" -m pip --disable-pip-version-check)
BINARY=(--only-binary=:all: --python-version "$PYVER" --implementation cp)
for n in 17 24 27 28 31 34; do BINARY+=(--platform "manylinux_2_${n}_x86_64"); done
BINARY+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

echo "== downloading wheels for CPython $PYVER, manylinux x86_64 (${#SPECS[@]} packages)"
for spec in "${SPECS[@]}"; do
  if "${PIP[@]}" download --quiet --no-deps "${BINARY[@]}" -d "$STAGE/wheels" "$spec" 2>"$STAGE/err"; then
    echo "   $spec"
  else
    # no wheel on the index: build one from the source distribution; only pure-Python ones can travel
    "${PIP[@]}" download --quiet --no-deps --no-binary=:all: -d "$STAGE/sdist" "$spec" \
      || { cat "$STAGE/err" >&2; echo "gpu_study_prepare.sh: cannot get $spec" >&2; exit 1; }
    "${PIP[@]}" wheel --quiet --no-deps -w "$STAGE/wheels" "$STAGE/sdist/"* >/dev/null
    rm -rf "${STAGE:?}/sdist/"*
    echo "   $spec (built from its source distribution)"
  fi
done
if ls "$STAGE/wheels" | grep -v -e '-none-any\.whl$' -e "-cp${PYVER/./}-" -e '-abi3-' | grep -q .; then
  echo "gpu_study_prepare.sh: wheels that will not install on CPython $PYVER:" >&2
  ls "$STAGE/wheels" | grep -v -e '-none-any\.whl$' -e "-cp${PYVER/./}-" -e '-abi3-' >&2
  exit 1
fi

echo "== building the nnunet_stipple wheel from this checkout (its tracked and untracked, not ignored files)"
mkdir -p "$STAGE/src"
{ git ls-files -z; git ls-files -z -o --exclude-standard; } \
  | tar -C "$REPO" --null -T - -cf - | tar -C "$STAGE/src" -xf -
"${PIP[@]}" wheel --quiet --no-deps -w "$STAGE/wheels" "$STAGE/src" >"$STAGE/build.log" 2>&1 \
  || "${PIP[@]}" wheel --quiet --no-deps --no-build-isolation -w "$STAGE/wheels" "$STAGE/src" \
       >>"$STAGE/build.log" 2>&1 \
  || { cat "$STAGE/build.log" >&2; echo "gpu_study_prepare.sh: building nnunet_stipple failed" >&2; exit 1; }

echo "== packing $DATASET_NAME"
tar -C "$(dirname "$DATASET_DIR")" -cf "$STAGE/items/$DATASET_NAME.tar" "$DATASET_NAME"
mv "$STAGE/wheels/"*.whl "$STAGE/items/"

FINGERPRINT=$(bash "$REPO/scripts/gpu_study.sh" fingerprint)
COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- nnunet_stipple pyproject.toml 2>/dev/null) ]] \
  && COMMIT="$COMMIT-dirty"
# what travels with every call besides a part: tracked files and untracked ones git does not ignore
TREE_BYTES=$( { git -C "$REPO" ls-files -z; git -C "$REPO" ls-files -z -o --exclude-standard; } \
  | (cd "$REPO" && xargs -0 -r stat -c %s 2>/dev/null) | awk '{s += $1} END {print s + 0}')

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
"$PY" - "$STAGE/items" "$OUTDIR" "$MAX_MIB" "$TREE_BYTES" "$PYVER" "$COMMIT" "$FINGERPRINT" "$DATASET_NAME" <<'PY'
import datetime, json, os, shutil, sys
items_dir, out, max_mib, tree, pyver, commit, fp, dataset = sys.argv[1:9]
cap, tree = int(float(max_mib) * 2 ** 20), int(tree)
limit = 64 * 2 ** 20            # what one call may carry, the working tree included
if cap + tree > limit:
    cap = limit - tree - 2 ** 20
items = {f: os.path.getsize(os.path.join(items_dir, f)) for f in os.listdir(items_dir)}
# the dataset tar may be cut into pieces (cat piece... | tar -x); a wheel may not
for f, size in list(items.items()):
    if size > cap:
        if not f.endswith(".tar"):
            sys.exit(f"{f} is {size / 2 ** 20:.1f} MiB, more than a part may hold ({cap / 2 ** 20:.1f} MiB)")
        del items[f]
        with open(os.path.join(items_dir, f), "rb") as src:
            i = 0
            while chunk := src.read(cap):
                piece = f"{f}.{i:02d}"
                open(os.path.join(items_dir, piece), "wb").write(chunk)
                items[piece] = len(chunk)
                i += 1
        os.remove(os.path.join(items_dir, f))
parts = []                      # first fit, largest first
for f in sorted(items, key=lambda k: -items[k]):
    for p in parts:
        if p["bytes"] + items[f] <= cap:
            break
    else:
        p = {"files": [], "bytes": 0}
        parts.append(p)
    p["files"].append(f)
    p["bytes"] += items[f]
names = [f"part{i + 1}" for i in range(len(parts))]
info = {"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "git_commit": commit,
        "source_fingerprint": fp, "python_version": pyver, "dataset": dataset,
        "parts": {n: sorted(p["files"]) for n, p in zip(names, parts)}}
for n, p in zip(names, parts):
    d = os.path.join(out, n)
    os.makedirs(d)
    reqs = []
    for f in p["files"]:
        shutil.move(os.path.join(items_dir, f), os.path.join(d, f))
        if f.endswith(".whl"):
            name, version = f.split("-")[:2]
            reqs.append(f"{name}=={version}")
    if reqs:
        open(os.path.join(d, "requirements.txt"), "w").write("\n".join(sorted(reqs)) + "\n")
    json.dump(info, open(os.path.join(d, "bundle.json"), "w"), indent=1)
    dataset_here = any(f.startswith(dataset + ".tar") for f in p["files"])
    print(f"   {n}: {p['bytes'] / 2 ** 20:5.1f} MiB, {len(reqs)} wheels" + (", the dataset" if dataset_here else ""))
print(f"   (+ {tree / 2 ** 20:.1f} MiB of working tree with every call; at most 64 MiB per call)")
PY

mapfile -t PARTS < <(cd "$OUTDIR" && ls -d part* | sort -V)
for part in "${PARTS[@]}"; do
  size=$(du -sb "$OUTDIR/$part" | cut -f1)
  if (( size + TREE_BYTES > 64 * 1024 * 1024 )); then
    echo "gpu_study_prepare.sh: $part + working tree = $(( (size + TREE_BYTES) / 1048576 )) MiB > 64 MiB" >&2; exit 1
  fi
done
REL=${OUTDIR#"$REPO"/}
N=${#PARTS[@]}
cat <<EOF

== ready: $N parts in $REL (sources $FINGERPRINT, commit $COMMIT)

Device calls, in this order and back to back (a machine is given back 30 s after a call, and a fresh one has
none of what earlier calls carried or installed):
EOF
k=1
for (( i = 0; i < N - 1; i++ )); do
  echo "  $k. run(command=\"bash scripts/gpu_study.sh install\", carry=[\"$REL/${PARTS[$i]}\"], timeout_s=300)"
  k=$(( k + 1 ))
done
cat <<EOF
  $k. run(command="bash scripts/gpu_study.sh --deadline 560 install data cost study collect",
         carry=["$REL/${PARTS[$((N - 1))]}"], timeout_s=600)
  $(( k + 1 )). only if call $k says the study is not finished:
     run(command="bash scripts/gpu_study.sh --deadline D study collect", timeout_s=600)
     with D = the device time left (status: budget_left_s) minus 60, at most 560: a call cut short by the
     session's budget returns nothing, while the deadline stops the study in time for collect.
Each call that collects returns \$OUT/btcv102_gpu.tar.gz (the record) and btcv102_gpu_logs.tar.gz; the last one
holds everything. Then here:  mkdir -p docs/results && tar -xzf FILES_AT/btcv102_gpu.tar.gz -C docs/results/
Rerun this script after changing nnunet_stipple (the machine rebuilds it from the checkout if it differs anyway).
EOF
