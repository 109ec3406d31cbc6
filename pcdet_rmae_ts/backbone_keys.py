"""The YAML keys of ``MODEL.BACKBONE_3D`` (RMAECMAEBackbonePhase1), by component: a leaf module, so
config validation (``config.py``) knows them without importing the models."""
from __future__ import annotations

# encoder YAML key -> VoxelNeXtEncoder keyword argument (an absent key keeps the encoder's default)
ENCODER_ARGS = {"CHANNELS": "channels", "OUT_CHANNEL": "out_channel", "SPCONV_KERNEL_SIZES": "kernel_sizes"}
ENCODER_KEYS = tuple(ENCODER_ARGS)
MASKING_KEYS = ("MASKED_RATIO", "MASKING_TARGET", "NUM_ANGULAR_GROUPS", "ANGULAR_GROUP_SIZE", "ANGULAR_RANGE",
                "DISTANCE_THRESHOLDS", "RANGE_MASK_PROBS", "USE_BERNOULLI_MASKING",
                "ENABLE_2STAGE_MASKING", "MIN_KEPT_VOXELS", "MASKING_SEED")
TEACHER_STUDENT_KEYS = ("ENABLE_TEACHER_STUDENT", "TEACHER_STUDENT_MODE", "TEACHER_BACKBONE_TYPE",
                        "TEACHER_MOMENTUM", "TEACHER_LOG_INTERVAL", "FEATURE_DIM")
PHASE2_KEYS = ("MLFR", "VOXEL_CONTRAST", "FRAME_CONTRAST")
VALID_KEYS = ("NAME", "PRETRAINING", "OCCUPANCY_DECODER", "LOSS_CONFIG") + ENCODER_KEYS + MASKING_KEYS \
    + TEACHER_STUDENT_KEYS + PHASE2_KEYS

__all__ = ["ENCODER_ARGS", "ENCODER_KEYS", "MASKING_KEYS", "TEACHER_STUDENT_KEYS", "PHASE2_KEYS", "VALID_KEYS"]
