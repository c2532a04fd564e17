#!/usr/bin/env bash
# The GPU run of issue 10, on one GPU machine without network: plain nnU-Net vs STIPPLE without relabeling at
# alpha = 100 % and 10 % on Dataset102_BTCVLowres (2d, study profile gpu-2d), the GPU cost ratios (training
# step; prediction per case, positioning included), and the study's record packed for docs/results/btcv102_gpu/.
# The wheels and the dataset come from scripts/gpu_study_prepare.sh, run first on a machine with network.
# docs/benchmarks.md, "GPU run (ready, not run)", gives the sequence of calls.
#
#   bash scripts/gpu_study.sh [OPTIONS] STEP...
#
# Steps run in the order given; each can be repeated (what is done is skipped or continued):
#   venv     WORK/venv from the machine's python (--python): --system-site-packages plus a .pth that adds that
#            python's own site-packages (it may itself be a venv), so its torch is used and never replaced
#   install  venv, then `pip install --no-index --no-deps` of the wheels of every bundle part present
#            (BUNDLE/part*/requirements.txt; parts carried by earlier calls stay installed); nnunet_stipple is
#            rebuilt from this checkout if its sources changed since the bundle was made; once every part is
#            in: imports, declared requirements and nnU-Net's trainer lookup are checked
#   data     the raw dataset into WORK/nnUNet_raw (the bundle's tar, --raw-dataset DIR or --phantom), then
#            nnUNetv2_plan_and_preprocess -c CONFIGURATION unless it is preprocessed already
#   cost     nnUNetv2_stipple_study cost (--cost-args), unless WORK/study/cost.json exists
#   study    nnUNetv2_stipple_study run --no-report (resumes; at the deadline it is interrupted with SIGINT and
#            the next `study` continues from nnU-Net's last checkpoint, saved every epoch by gpu-2d)
#   collect  nnUNetv2_stipple_study report, then the record (study.json, runs/*/*/run.json, stipple_run.json,
#            fold_*/validation/summary.json, ..., report/, cost.json, gpu_study_environment.json) packed as
#            OUTDIR/NAME.tar.gz (one folder NAME/) and the logs as OUTDIR/NAME_logs.tar.gz
#   all      install data cost study collect
#
# Options (defaults in brackets):
#   --work DIR              work folder [REPO/.gpu_work, git-ignored: it stays on a warm machine between calls]
#   --bundle DIR            bundle of gpu_study_prepare.sh [REPO/.gpu_bundle]
#   --python PY             the machine's python, the one with torch [python3]
#   --venv DIR              environment to run in [WORK/venv]; e.g. .venv to run the steps here on CPU
#   --device cuda|cpu       [cuda]
#   -d, --dataset ID        [102; 990 with --phantom]
#   -c, --configuration C   [2d]
#   --profile P             study profile [gpu-2d]
#   --methods "M ..."       [plain stipple_norelab]
#   --alphas "A ..."        [100 10]
#   --folds "F ..."         [the profile's]
#   --schedule-scale X      multiplies the profile's epochs [1]
#   --cost-args "..."       arguments of `nnUNetv2_stipple_study cost`
#                           [--iterations 10 --warmup 3 --repeats 1 --cases 2]
#   --phantom               the synthetic phantom (nnUNetv2_stipple_make_phantom) instead of the bundle's dataset
#   --phantom-args "..."    arguments of nnUNetv2_stipple_make_phantom []
#   --raw-dataset DIR       link this raw dataset folder into WORK/nnUNet_raw instead of unpacking the bundle's
#   --np N                  processes of nnU-Net's preprocessing and exports [nproc]
#   --deadline S            end every step S seconds after the start of this script: the study (and the cost)
#                           get what the later steps leave, collect always runs [0: no deadline]
#   --name NAME             record name [btcv102_gpu]
#   --out DIR               where the packed record goes [$OUT if set, else WORK/out]
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T0=$SECONDS

die() { echo "gpu_study.sh: $*" >&2; exit 2; }

WORK=${GPU_STUDY_WORK:-$REPO/.gpu_work}
BUNDLE=${GPU_STUDY_BUNDLE:-$REPO/.gpu_bundle}
HOST_PYTHON=python3
VENV=""
DEVICE=cuda
DATASET=""
CONFIG=2d
PROFILE=gpu-2d
METHODS="plain stipple_norelab"
ALPHAS="100 10"
FOLDS=""
SCALE=1
COST_ARGS="--iterations 10 --warmup 3 --repeats 1 --cases 2"
PHANTOM=0
PHANTOM_ARGS=""
RAW_DATASET=""
NP=$(nproc 2>/dev/null || echo 2)
DEADLINE=0
NAME=btcv102_gpu
OUTDIR=${OUT:-}
STEPS=()
ARGV="$*"

need() { [[ $# -ge 2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --work) need "$@"; WORK=$2; shift 2 ;;
    --bundle) need "$@"; BUNDLE=$2; shift 2 ;;
    --python) need "$@"; HOST_PYTHON=$2; shift 2 ;;
    --venv) need "$@"; VENV=$2; shift 2 ;;
    --device) need "$@"; DEVICE=$2; shift 2 ;;
    -d|--dataset) need "$@"; DATASET=$2; shift 2 ;;
    -c|--configuration) need "$@"; CONFIG=$2; shift 2 ;;
    --profile) need "$@"; PROFILE=$2; shift 2 ;;
    --methods) need "$@"; METHODS=$2; shift 2 ;;
    --alphas) need "$@"; ALPHAS=$2; shift 2 ;;
    --folds) need "$@"; FOLDS=$2; shift 2 ;;
    --schedule-scale) need "$@"; SCALE=$2; shift 2 ;;
    --cost-args) need "$@"; COST_ARGS=$2; shift 2 ;;
    --phantom) PHANTOM=1; shift ;;
    --phantom-args) need "$@"; PHANTOM_ARGS=$2; shift 2 ;;
    --raw-dataset) need "$@"; RAW_DATASET=$2; shift 2 ;;
    --np) need "$@"; NP=$2; shift 2 ;;
    --deadline) need "$@"; DEADLINE=$2; shift 2 ;;
    --name) need "$@"; NAME=$2; shift 2 ;;
    --out) need "$@"; OUTDIR=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    all) STEPS+=(install data cost study collect); shift ;;
    venv|install|data|cost|study|collect|fingerprint) STEPS+=("$1"); shift ;;
    *) die "unknown option or step '$1' (see --help)" ;;
  esac
done
[[ ${#STEPS[@]} -gt 0 ]] || die "no step given (see --help)"
[[ $DEVICE == cuda || $DEVICE == cpu ]] || die "--device must be cuda or cpu"
[[ $DEADLINE =~ ^[0-9]+$ ]] || die "--deadline must be a number of seconds"
[[ $NP =~ ^[1-9][0-9]*$ ]] || die "--np must be a positive number"
[[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--name may hold letters, digits, '.', '_' and '-' only"

# The nnunet_stipple sources as a short hash (same paths and contents = same hash, here and on the machine).
source_fingerprint() {
  (cd "$REPO" && find nnunet_stipple pyproject.toml -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
if [[ ${STEPS[*]} == fingerprint ]]; then source_fingerprint; exit 0; fi

[[ -n $DATASET ]] || { if [[ $PHANTOM == 1 ]]; then DATASET=990; else DATASET=102; fi; }
[[ $DATASET =~ ^[0-9]+$ ]] || die "--dataset must be a dataset id (a number)"
mkdir -p "$WORK" || die "cannot create $WORK"
abspath() { case "$1" in /*|"") echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
WORK=$(cd "$WORK" && pwd)
BUNDLE=$(abspath "$BUNDLE")
RAW_DATASET=$(abspath "$RAW_DATASET")
OUTDIR=$(abspath "$OUTDIR")
VENV=$(abspath "${VENV:-$WORK/venv}")
PY=$VENV/bin/python
STUDY=$WORK/study
LOGS=$WORK/logs
RECORD=$WORK/record/$NAME
OUTDIR=${OUTDIR:-$WORK/out}
STEPS_FILE=$WORK/steps.jsonl
mkdir -p "$LOGS" "$OUTDIR" "$WORK/nnUNet_raw" "$WORK/nnUNet_preprocessed" "$WORK/nnUNet_results"
export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
# torch.compile costs a minute or more per process, more than it saves on a few hundred iterations
export nnUNet_compile=${nnUNet_compile:-f}
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-$NP}
DA=$(( NP - 2 )); (( DA > 12 )) && DA=12; (( DA < 1 )) && DA=1
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-$DA}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
unset nnUNet_extTrainer   # set from the environment that runs (have_env): an outer value could point elsewhere

STATUS=0        # exit status: 1 once a step failed
SUMMARY=()

# ---------------------------------------------------------------------------------------------------------------
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
elapsed() { echo $(( SECONDS - T0 )); }

# seconds a step may take so that the later steps still fit before the deadline (0: no deadline)
RESERVE_COST=180
RESERVE_COLLECT=60
reserve_after() {   # $1: index of the current step
  local i r=0
  for (( i = $1 + 1; i < ${#STEPS[@]}; i++ )); do
    case "${STEPS[$i]}" in
      cost) [[ -f $STUDY/cost.json ]] || r=$(( r + RESERVE_COST )) ;;
      collect) r=$(( r + RESERVE_COLLECT )) ;;
    esac
  done
  echo "$r"
}

# limited SECONDS CMD...: the command with a time limit (SIGINT, then SIGKILL 20 s later) when SECONDS > 0;
# returns the command's status, 124 when it was interrupted at the limit
limited() {
  local limit=$1; shift
  if (( limit > 0 )); then
    timeout -k 20 -s INT "$limit" "$@"
  else
    "$@"
  fi
}

have_env() {
  [[ -x $PY ]] || die "no environment at $VENV: run the install step first (or give --venv DIR)"
  # nnU-Net finds the STIPPLE trainers through nnUNet_extTrainer, in the trainings and in the study process
  # itself (positioning quality of a finished model, the cost benchmark)
  if [[ -z ${nnUNet_extTrainer:-} ]]; then
    eval "$("$PY" -m nnunet_stipple.commands.env)" || die "nnUNetv2_stipple_env failed"
  fi
}

# does `nnUNetv2_stipple_study SUB --help` mention FLAG?
supports() { "$PY" -m nnunet_stipple.commands.study "$1" --help 2>/dev/null | grep -q -- "$2"; }

# a console script of the environment, else from PATH
tool() {
  if [[ -x $VENV/bin/$1 ]]; then echo "$VENV/bin/$1"; else command -v "$1" || die "$1 not found"; fi
}

dataset_folder() {   # the raw dataset folder of DATASET (empty when absent)
  local d
  d=$(printf 'Dataset%03d_' "$DATASET")
  find "$nnUNet_raw" -mindepth 1 -maxdepth 1 -name "${d}*" 2>/dev/null | sort | head -1
}

bundle_info() {   # bundle.json of any part present (empty when none)
  find "$BUNDLE" -mindepth 2 -maxdepth 2 -name bundle.json 2>/dev/null | sort | head -1
}

# ---------------------------------------------------------------------------------------------------------------
step_venv() {
  if [[ -x $PY ]]; then
    echo "venv: $VENV exists"
  else
    "$HOST_PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' \
      || { echo "venv: $HOST_PYTHON has no torch" >&2; return 1; }
    "$HOST_PYTHON" -m venv --system-site-packages --without-pip "$VENV" || return 1
  fi
  local site
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  # a venv made from a python that is itself a venv sees the base python's packages, not that venv's: add them
  "$HOST_PYTHON" - "$site/_gpu_study_host.pth" "$site" <<'PY' || return 1
import os, site, sys
out, own = sys.argv[1], os.path.realpath(sys.argv[2])
dirs = [d for d in site.getsitepackages() if os.path.isdir(d) and os.path.realpath(d) != own]
with open(out, "w") as f:
    f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")
print("venv: the machine's site-packages:", ", ".join(dirs))
PY
  "$PY" - "$DEVICE" <<'PY' || return 1
import importlib.metadata as md, importlib.util, sys
spec = importlib.util.find_spec("torch")
if spec is None:
    sys.exit("venv: torch is not importable from the venv")
where = f"python {sys.version.split()[0]} ({sys.executable}), torch {md.version('torch')} from {spec.origin}"
if sys.argv[1] == "cuda":        # importing torch takes seconds: only where the GPU must be checked
    import torch
    if not torch.cuda.is_available():
        sys.exit(f"venv: {where}: --device cuda but torch sees no GPU")
    where += f", CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name(0)}"
print("venv:", where)
PY
}

step_install() {
  step_venv || return 1
  local info parts=() missing=() part req mark
  info=$(bundle_info)
  if [[ -z $info ]]; then
    echo "install: no bundle under $BUNDLE (made by scripts/gpu_study_prepare.sh); checking the environment only"
  else
    mapfile -t parts < <("$PY" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["parts"]))' "$info")
    local links=()
    for part in "${parts[@]}"; do [[ -d $BUNDLE/$part ]] && links+=(--find-links "$BUNDLE/$part"); done
    for part in "${parts[@]}"; do
      req=$BUNDLE/$part/requirements.txt
      if compgen -G "$VENV/.installed_${part}_*" >/dev/null && [[ ! -f $req ]]; then
        echo "install: $part installed by an earlier call"; continue
      fi
      if [[ ! -f $req ]]; then missing+=("$part"); continue; fi
      mark=$VENV/.installed_${part}_$(sha256sum "$req" | cut -c1-12)
      if [[ -f $mark ]]; then echo "install: $part installed already"; continue; fi
      echo "install: $part ($(grep -c . "$req") wheels)"
      "$PY" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
        "${links[@]}" -r "$req" || { echo "install: pip failed on $part" >&2; return 1; }
      rm -f "$VENV/.installed_${part}_"*
      touch "$mark"
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      echo "install: waiting for ${missing[*]} (carry it in the next call); checks run once every part is in"
      return 0
    fi
  fi
  # nnunet_stipple: the bundle's wheel unless this checkout's sources differ from the ones it was built from
  local fp bundle_fp=""
  fp=$(source_fingerprint)
  [[ -n $info ]] && bundle_fp=$("$PY" -c \
    'import json, sys; print(json.load(open(sys.argv[1])).get("source_fingerprint", ""))' "$info")
  if [[ ! -f $VENV/.source_$fp ]]; then
    if [[ $fp == "$bundle_fp" ]] && "$PY" -c 'import nnunet_stipple' 2>/dev/null; then
      echo "install: nnunet_stipple from the bundle (sources $fp)"
    else
      echo "install: nnunet_stipple from this checkout (sources $fp; the bundle's: ${bundle_fp:-none})"
      # from a copy (the build writes build/ and *.egg-info next to the sources); setuptools and wheel come with
      # the bundle, so the build does not depend on the machine's
      rm -rf "$WORK/src" && mkdir -p "$WORK/src" && cp -r "$REPO/nnunet_stipple" "$REPO/pyproject.toml" \
        "$REPO/README.md" "$WORK/src/" || return 1
      if ! "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --force-reinstall --no-compile \
          --disable-pip-version-check "$WORK/src"; then
        if [[ -n $bundle_fp ]] && "$PY" -c 'import nnunet_stipple' 2>/dev/null; then
          echo "install: WARNING: building nnunet_stipple from this checkout failed: the bundle's nnunet_stipple" \
               "(sources $bundle_fp) runs, NOT this checkout's ($fp)" >&2
          fp=$bundle_fp
        else
          echo "install: building nnunet_stipple failed" >&2; return 1
        fi
      fi
    fi
    rm -f "$VENV/.source_"*
    touch "$VENV/.source_$fp"
  fi
  check_environment
}

check_environment() {
  "$PY" - <<'PY' || return 1
import importlib, importlib.metadata as md, sys
from packaging.requirements import Requirement
failed = []
for mod in ("torch", "torchvision", "nnunetv2", "SimpleITK", "blosc2", "cc3d", "monai", "nibabel", "acvl_utils",
            "batchgenerators", "batchgeneratorsv2", "dynamic_network_architectures", "timm", "yacs", "skimage",
            "sklearn", "scipy", "pandas", "matplotlib", "seaborn", "nnunet_stipple.trainers"):
    try:
        importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - report every failure
        failed.append(f"{mod}: {type(e).__name__}: {e}")
# declared requirements of nnunet_stipple and its dependencies that are not met (not bundled on purpose:
# imagecodecs (TIFF codecs, imported by nothing that runs here) and the argparse backport; the machine's torch
# brings its own)
skip = {"imagecodecs", "argparse"}
machine_owned = {"torch", "torchvision", "triton"}
env = {"extra": ""}
seen, todo, unmet = set(), ["nnunet_stipple"], []
while todo:
    name = todo.pop()
    if name.lower() in seen or name.lower() in machine_owned:
        continue
    seen.add(name.lower())
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        continue
    for r in map(Requirement, reqs):
        if r.marker is not None and not r.marker.evaluate(env):
            continue
        if r.name.lower() in skip:
            continue
        try:
            v = md.version(r.name)
        except md.PackageNotFoundError:
            unmet.append(f"{r} (needed by {name}): not installed")
            continue
        if r.specifier and not r.specifier.contains(v, prereleases=True):
            unmet.append(f"{r} (needed by {name}): {v} installed")
        todo.append(r.name)
versions = {p: md.version(p) for p in ("nnunet_stipple", "nnunetv2", "torch", "numpy", "monai", "SimpleITK", "timm")}
print("check: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
for u in unmet:
    print(f"check: WARNING: requirement {u}")
for f in failed:
    print(f"check: IMPORT FAILED: {f}")
sys.exit(1 if failed else 0)
PY
  "$PY" -m nnunet_stipple.commands.env --check || return 1
}

step_data() {
  have_env
  local raw name id3 tars
  raw=$(dataset_folder)
  if [[ -n $raw && -f $raw/dataset.json ]]; then
    echo "data: $raw"
  elif [[ $PHANTOM == 1 ]]; then
    # shellcheck disable=SC2086
    "$PY" -m nnunet_stipple.commands.make_phantom -d "$DATASET" --raw "$nnUNet_raw" $PHANTOM_ARGS || return 1
  elif [[ -n $RAW_DATASET ]]; then
    [[ -f $RAW_DATASET/dataset.json ]] || { echo "data: $RAW_DATASET has no dataset.json" >&2; return 1; }
    ln -sfn "$(cd "$RAW_DATASET" && pwd)" "$nnUNet_raw/$(basename "$RAW_DATASET")" || return 1
  else
    id3=$(printf 'Dataset%03d_' "$DATASET")
    mapfile -t tars < <(find "$BUNDLE" -mindepth 2 -maxdepth 2 -name "${id3}*.tar*" 2>/dev/null | LC_ALL=C sort)
    if [[ ${#tars[@]} -eq 0 ]]; then
      echo "data: no ${id3}*.tar in $BUNDLE/part* (carry the part that holds it)" >&2; return 1
    fi
    echo "data: unpacking ${tars[*]}"
    cat "${tars[@]}" | tar -x -C "$nnUNet_raw" || { echo "data: unpacking failed (a piece missing?)" >&2; return 1; }
  fi
  raw=$(dataset_folder)
  [[ -n $raw ]] || { echo "data: no raw dataset $DATASET under $nnUNet_raw" >&2; return 1; }
  name=$(basename "$raw")
  if "$PY" - "$nnUNet_preprocessed/$name" "$CONFIG" <<'PY'
import json, os, sys
base, config = sys.argv[1], sys.argv[2]
try:
    c = json.load(open(os.path.join(base, "nnUNetPlans.json")))["configurations"][config]
    folder = os.path.join(base, c["data_identifier"])
    sys.exit(0 if any(f.endswith((".b2nd", ".npz")) for f in os.listdir(folder)) else 1)
except (OSError, KeyError, ValueError):
    sys.exit(1)
PY
  then
    echo "data: $name $CONFIG preprocessed already"
  else
    "$(tool nnUNetv2_plan_and_preprocess)" -d "$DATASET" -c "$CONFIG" -np "$NP" -npfp "$NP" || return 1
  fi
}

profile_plans() {
  "$PY" -c 'import sys; from nnunet_stipple.benchmarks.study import PROFILES; print(PROFILES[sys.argv[1]].plans)' \
    "$PROFILE"
}

step_cost() {   # $1: time limit (0: none)
  have_env
  if [[ -f $STUDY/cost.json ]]; then
    echo "cost: $STUDY/cost.json exists (delete it to measure again)"; return 0
  fi
  local plans
  plans=$(profile_plans) || return 1
  # shellcheck disable=SC2086
  limited "$1" "$PY" -m nnunet_stipple.commands.study cost -d "$DATASET" -c "$CONFIG" -p "$plans" \
    --study-dir "$STUDY" -device "$DEVICE" $COST_ARGS
}

# A study interrupted at the deadline may have cut nnU-Net's torch.save of a checkpoint short; `--c` would then
# fail on it. Unreadable checkpoints of unfinished folds are renamed (*.pth.unreadable), so that nnU-Net
# continues from the next one it looks for (final, latest, best) or starts the fold again.
set_aside_unreadable_checkpoints() {
  [[ -d $STUDY/runs ]] || return 0
  "$PY" - "$STUDY/runs" <<'PY'
import glob, os, sys
files = [f for f in glob.glob(os.path.join(sys.argv[1], "*", "*", "*", "*", "fold_*", "checkpoint_*.pth"))
         if not os.path.isfile(os.path.join(os.path.dirname(f), "validation", "summary.json"))]
if files:
    import torch
    for f in files:
        try:
            torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to read it
            os.replace(f, f + ".unreadable")
            print(f"study: {f} is unreadable ({type(e).__name__}); set aside as {os.path.basename(f)}.unreadable")
PY
}

step_study() {   # $1: time limit (0: none)
  have_env
  set_aside_unreadable_checkpoints
  # shellcheck disable=SC2206
  local args=(run -d "$DATASET" -c "$CONFIG" --profile "$PROFILE" --study-dir "$STUDY" --methods $METHODS
              --alphas $ALPHAS -device "$DEVICE" --no-report)
  # shellcheck disable=SC2206
  [[ -n $FOLDS ]] && args+=(--folds $FOLDS)
  [[ $SCALE != 1 ]] && args+=(--schedule-scale "$SCALE")
  supports run --record-dir && args+=(--record-dir "$RECORD")
  limited "$1" "$PY" -m nnunet_stipple.commands.study "${args[@]}"
}

step_collect() {
  have_env
  mkdir -p "$RECORD"
  if [[ -f $STUDY/study.json ]]; then
    if supports report --record-dir; then
      # the runs were recorded by `run --record-dir` as they finished; this adds the report and study.json
      "$PY" -m nnunet_stipple.commands.study report --study-dir "$STUDY" --record-dir "$RECORD" \
        || echo "collect: the report failed; packing the rest" >&2
      # and the runs' files that the report wrote after they were recorded (the NSD per case)
      "$PY" - "$STUDY" "$RECORD" <<'PY' || echo "collect: recording the runs again failed" >&2
import sys
from pathlib import Path
from nnunet_stipple.benchmarks import study as st
from nnunet_stipple.benchmarks.record import export_run
study_dir, record_dir = Path(sys.argv[1]), Path(sys.argv[2])
study = st.load_study(study_dir)
n = 0
for entry in study.get("runs", {}).values():
    spec = st.RunSpec.from_json(entry)
    if spec.skipped:
        continue
    mdir = st.model_folder(spec.folder(study_dir), study["dataset"], spec.trainer, study["plans"],
                           study["configuration"])
    done = [f for f in entry.get("folds", study["folds"]) if st.fold_finished(mdir, f)]
    n += len(export_run(study_dir, record_dir, spec.folder(study_dir).relative_to(study_dir).as_posix(), done))
print(f"collect: {n} more run files recorded")
PY
    else
      "$PY" -m nnunet_stipple.commands.study report --study-dir "$STUDY" \
        || echo "collect: the report failed; packing the rest" >&2
      (cd "$STUDY" && find . -type f \( -path './study.json' -o -path './report/*' -o -path './runs/*/*/run.json' \
          -o -name stipple_run.json -o -path '*/fold_*/validation/summary.json' \) -print0 \
        | xargs -0 -r cp --parents -t "$RECORD")
    fi
  else
    echo "collect: no study yet ($STUDY/study.json)"
  fi
  [[ -f $STUDY/cost.json ]] && cp "$STUDY/cost.json" "$RECORD/cost.json"
  local installed
  installed=$(find "$VENV" -maxdepth 1 -name '.source_*' 2>/dev/null | head -1)
  "$PY" - "$RECORD/gpu_study_environment.json" "$STEPS_FILE" "$(source_fingerprint)" "$(bundle_info)" \
      "${installed##*/.source_}" "$ARGV" <<'PY' || echo "collect: environment summary failed" >&2
import json, platform, subprocess, sys, os, importlib.metadata as md
out, steps_file, fp, bundle, installed, argv = sys.argv[1:7]
info = {"script": "scripts/gpu_study.sh", "argv": argv, "python": sys.version.split()[0],
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "checkout_source_fingerprint": fp,
        "installed_source_fingerprint": installed or None}
info["versions"] = {}
for p in ("torch", "nnunet_stipple", "nnunetv2", "numpy", "scipy", "monai", "SimpleITK", "blosc2", "timm",
          "torchvision"):
    try:
        info["versions"][p] = md.version(p)
    except md.PackageNotFoundError:
        info["versions"][p] = None
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
if bundle:
    b = json.load(open(bundle))
    info["bundle"] = {k: b.get(k) for k in ("created", "git_commit", "source_fingerprint", "python_version")}
info["environment"] = {k: os.environ.get(k) for k in ("nnUNet_compile", "nnUNet_n_proc_DA", "nnUNet_def_n_proc")}
try:
    info["steps"] = [json.loads(l) for l in open(steps_file) if l.strip()]
except OSError:
    info["steps"] = []
json.dump(info, open(out, "w"), indent=1)
PY
  # what comes back from the machine: a few files, at most two folders deep, so the record travels as a tar
  tar -C "$(dirname "$RECORD")" -czf "$OUTDIR/$NAME.tar.gz" "$NAME" || return 1
  (cd "$WORK" && { find logs -type f; [[ -d study ]] && find study -name '*.log'; } \
    | tar -czf "$OUTDIR/${NAME}_logs.tar.gz" -T -) || true
  echo "collect: $OUTDIR/$NAME.tar.gz ($(find "$RECORD" -type f | wc -l) files) and ${NAME}_logs.tar.gz;"
  echo "         unpack with: tar -xzf $NAME.tar.gz -C docs/results/"
  (cd "$RECORD" && find . -type f | LC_ALL=C sort | sed 's|^\./|  |')
  [[ -f $RECORD/report/table.md ]] && { echo; cat "$RECORD/report/table.md"; }
  if [[ -f $STUDY/cost.json ]]; then
    "$PY" - "$STUDY/cost.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
t = s["train_seconds_per_iteration"]
line = f"cost: training s/iteration plain {t['plain']:.4f}, STIPPLE {t['stipple']:.4f}, ratio {s['train_ratio']:.3f}"
if "predict_ratio" in s:
    line += (f"; prediction s/case ratio {s['predict_ratio']:.3f}, positioning "
             f"{s['positioning_seconds_per_case']:.3f} s/case")
print("\n" + line)
PY
  fi
  return 0
}

# ---------------------------------------------------------------------------------------------------------------
main() {
  echo "gpu_study.sh $(now): steps ${STEPS[*]}; work $WORK; device $DEVICE; dataset $DATASET $CONFIG;" \
       "profile $PROFILE;" \
       "deadline ${DEADLINE}s; nnUNet_n_proc_DA=$nnUNet_n_proc_DA nnUNet_compile=$nnUNet_compile"
  local i step limit rc t state started
  for (( i = 0; i < ${#STEPS[@]}; i++ )); do
    step=${STEPS[$i]}
    limit=0
    if (( DEADLINE > 0 )) && [[ $step == study || $step == cost ]]; then
      limit=$(( DEADLINE - $(elapsed) - $(reserve_after "$i") ))
      if (( limit < 60 )); then
        echo "== $step: skipped, ${limit}s left before the deadline"
        SUMMARY+=("$step: skipped (deadline)")
        printf '{"step": "%s", "started": "%s", "seconds": 0, "status": "skipped"}\n' "$step" "$(now)" >> "$STEPS_FILE"
        continue
      fi
    fi
    echo "== $step ($(now), ${limit}s limit; $(elapsed)s into this call)"
    t=$SECONDS
    started=$(now)
    case $step in
      venv) step_venv ;;
      install) step_install ;;
      data) step_data ;;
      cost) step_cost "$limit" ;;
      study) step_study "$limit" ;;
      collect) step_collect ;;
    esac
    rc=$?
    case $rc in
      0) state=ok ;;
      124) state=interrupted ;;
      *) state="failed ($rc)"; STATUS=1 ;;
    esac
    [[ $step == study && $rc == 1 ]] && state="failed (1): runs failed (their train_fold*.log) or an error above"
    echo "== $step: $state after $(( SECONDS - t ))s"
    SUMMARY+=("$step: $state, $(( SECONDS - t ))s")
    printf '{"step": "%s", "started": "%s", "seconds": %d, "status": "%s"}\n' "$step" "$started" \
      $(( SECONDS - t )) "$state" >> "$STEPS_FILE"
    if [[ $rc != 0 && $rc != 124 && ( $step == venv || $step == install || $step == data ) ]]; then
      # the later steps need these; still pack what exists if collect was asked for
      if [[ " ${STEPS[*]:$((i + 1))} " == *" collect "* && -x $PY ]]; then step_collect; fi
      break
    fi
  done
  echo "== done in $(elapsed)s: $(IFS=';'; echo "${SUMMARY[*]}")"
  if [[ " ${SUMMARY[*]} " == *"study: interrupted"* || " ${SUMMARY[*]} " == *"study: skipped"* ]]; then
    echo "   the study is not finished: run the steps 'study collect' again (it resumes)"
  fi
  return "$STATUS"
}

# from the work folder: `python -m nnunet_stipple...` must import the installed package, not this checkout's
cd "$WORK" || die "cannot enter $WORK"
LOG=$LOGS/$(date -u +%Y%m%dT%H%M%SZ)_$(IFS=_; echo "${STEPS[*]}").log
main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
