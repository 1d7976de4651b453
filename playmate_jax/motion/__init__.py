"""LivePortrait's 3D implicit motion space as pure jnp functions (arbitrary leading batch axes).

Per frame: canonical keypoints kp [21, 3] (identity), expression deformation exp [21, 3], head pose
pitch, yaw, roll (degrees), translation t (tx, ty; tz dropped) and scale s; keypoints are
x = s * (kp @ R + exp) + t. The generated motion vector [69] is exp (63) then pitch, yaw, roll, tx, ty, scale.
A clip's emotion label is an index into EMOTIONS (MEAD's order), or -1 for unknown.
"""

from playmate_jax.motion.keypoints import (LIP_KP, LOWER_LIP_KP, NUM_KP, UPPER_LIP_KP, as_keypoints,
                                           eye_opening, mouth_opening, relative_motion, transform_keypoints,
                                           transform_keypoints_with_matrix)
from playmate_jax.motion.pose import NUM_BINS, bins_to_degrees, matrix_to_degrees, rotation_matrix
from playmate_jax.motion.vector import (EXP_DIM, IDENTITY_DIM, MOTION_DIM, POSE_DIM, STD_FLOOR, MotionStats,
                                        denormalize_motion, normalize_motion, pack_motion, unpack_motion)

# A clip's per-frame motion fields, as the dataset stores them and the renderer's motion extractor returns them.
MOTION_KEYS = ("exp", "pitch", "yaw", "roll", "t", "scale", "kp")
EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")

__all__ = [
    "NUM_KP", "NUM_BINS", "EXP_DIM", "POSE_DIM", "MOTION_DIM", "IDENTITY_DIM", "STD_FLOOR", "LIP_KP", "UPPER_LIP_KP",
    "LOWER_LIP_KP", "EMOTIONS", "MOTION_KEYS", "bins_to_degrees", "rotation_matrix", "matrix_to_degrees", "as_keypoints",
    "transform_keypoints", "transform_keypoints_with_matrix", "relative_motion", "mouth_opening", "eye_opening",
    "pack_motion", "unpack_motion", "MotionStats", "normalize_motion", "denormalize_motion",
]
