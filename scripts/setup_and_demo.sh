#!/usr/bin/env bash
# The setup command of README.md: install into .venv, then run STIPPLE end to end on the synthetic
# abdomen phantom: make the dataset, plan and preprocess it, build the fold-0 prior, train a few
# iterations of STIPPLETrainer_CPUDemo with nnUNetv2_train, and predict its unlabeled images with
# nnUNetv2_stipple_predict. About 3 minutes on a 2-core CPU. Everything goes to ./demo_workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source .venv/bin/activate
WORK="${STIPPLE_DEMO_DIR:-$PWD/demo_workdir}"
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
eval "$(nnUNetv2_stipple_env)"   # lets nnUNetv2_train find the STIPPLE trainers (nnUNet_extTrainer)
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
set -x
nnUNetv2_stipple_make_phantom -d 990 --overwrite
nnUNetv2_plan_and_preprocess -d 990 -c 3d_fullres -np 2 --verify_dataset_integrity
nnUNetv2_stipple_build_priors -d 990 -c 3d_fullres -f 0 -B 5
nnUNetv2_stipple_show_prior -d 990 -c 3d_fullres -f 0 -B 5
nnUNetv2_train 990 3d_fullres 0 -tr STIPPLETrainer_CPUDemo -device "$DEVICE"
nnUNetv2_stipple_predict -i "$nnUNet_raw/Dataset990_STIPPLEPhantom/imagesUnlabeled" -o "$WORK/predictions" \
    -d 990 -c 3d_fullres -f 0 -tr STIPPLETrainer_CPUDemo -device "$DEVICE" --disable_tta
set +x
echo
echo "Demo done. Prior figures: $nnUNet_preprocessed/Dataset990_STIPPLEPhantom/stipple_priors/nnUNetPlans__3d_fullres/B5/fold_0_figures/"
echo "Predictions: $WORK/predictions (positioning reports in $WORK/predictions/stipple_positioning/)"
echo "The demo model trains for 3 iterations only: it shows the pipeline, not a useful segmentation."
