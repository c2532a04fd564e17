"""Teacher-student semi-supervised training inside nnU-Net (mean teacher, UA-MT): settings, the consistency
pieces and the unlabeled data loader (the trainer mixin is :mod:`nnunet_stipple.trainers.teacher_student`)."""
