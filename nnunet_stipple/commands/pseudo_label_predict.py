"""nnUNetv2_stipple_pseudo_label_predict: predict one shard of a pseudo-labeling round's unlabeled cases.

For datasets with thousands of unlabeled scans, run the shards of round t on several GPUs or machines
(sharing nnUNet_preprocessed and nnUNet_results), e.g.

    CUDA_VISIBLE_DEVICES=0 nnUNetv2_stipple_pseudo_label_predict -d 101 -c 3d_fullres -f 0 -tr STIPPLETrainer_PseudoLabel --round 1 -num_parts 2 -part_id 0
    CUDA_VISIBLE_DEVICES=1 nnUNetv2_stipple_pseudo_label_predict -d 101 -c 3d_fullres -f 0 -tr STIPPLETrainer_PseudoLabel --round 1 -num_parts 2 -part_id 1

then continue the loop with `nnUNetv2_train 101 3d_fullres 0 -tr STIPPLETrainer_PseudoLabel --c`: it reuses
every pseudo-label already written. Round t needs round t-1's model (``round_<t-1>/checkpoint_final.pth``).
"""
from __future__ import annotations

import argparse
import sys

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.commands.arguments import add_configuration, add_dataset, add_device, add_fold, add_plans, \
    add_trainer
from nnunet_stipple.pseudo_labeling.shard import predict_pseudo_label_shard


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_stipple_pseudo_label_predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset(p)
    add_configuration(p)
    add_fold(p, required=True, help="fold (as given to nnUNetv2_train)")
    add_trainer(p, required=True, help="the pseudo-labeling trainer of the run")
    add_plans(p, help="plans identifier (default nnUNetPlans)")
    p.add_argument("--round", type=int, required=True, help="round t >= 1 whose pseudo-labels to predict")
    p.add_argument("-num_parts", type=int, default=1, help="number of shards (default 1)")
    p.add_argument("-part_id", type=int, default=0, help="this shard, 0 .. num_parts-1 (default 0)")
    add_device(p, help="device (default cuda)")
    a = p.parse_args(argv)
    with input_errors_exit("nnUNetv2_stipple_pseudo_label_predict"):
        cases = predict_pseudo_label_shard(a.dataset, a.configuration, a.fold, a.trainer, a.round, a.num_parts,
                                           a.part_id, a.plans, a.device)
    print(f"round {a.round}, shard {a.part_id + 1}/{a.num_parts}: {len(cases)} cases have pseudo-labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
