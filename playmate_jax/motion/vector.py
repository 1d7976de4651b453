"""The per-frame motion vector (69 floats) and its normalization statistics."""

import flax.struct
import jax
import jax.numpy as jnp

from playmate_jax.motion.keypoints import NUM_KP, as_keypoints

EXP_DIM = NUM_KP * 3
POSE_DIM = 6  # pitch, yaw, roll (degrees), tx, ty, scale
MOTION_DIM = EXP_DIM + POSE_DIM
# The model's identity condition: the source frame's normalized motion vector, then its canonical keypoints.
IDENTITY_DIM = MOTION_DIM + NUM_KP * 3
# Standard deviations are floored at this value, so coordinates that never move normalize to 0, not inf.
STD_FLOOR = 1e-4


def pack_motion(exp: jax.Array, pitch: jax.Array, yaw: jax.Array, roll: jax.Array, t: jax.Array,
                scale: jax.Array) -> jax.Array:
  """[..., 69] = exp (21x3 row-major) then pitch, yaw, roll, tx, ty, scale. t is [..., 3] or [..., 2]."""
  exp = as_keypoints(exp)
  t = jnp.asarray(t, jnp.float32)
  pose = [jnp.asarray(a, jnp.float32) for a in (pitch, yaw, roll)] + [t[..., 0], t[..., 1]]
  pose = jnp.stack(pose + [jnp.asarray(scale, jnp.float32)], axis=-1)
  return jnp.concatenate([exp.reshape(exp.shape[:-2] + (EXP_DIM,)), pose], axis=-1)


def unpack_motion(v: jax.Array) -> dict[str, jax.Array]:
  """Inverse of `pack_motion`: exp [..., 21, 3], pitch, yaw, roll [...], t [..., 3] (tz = 0), scale [...]."""
  v = jnp.asarray(v, jnp.float32)
  pose = v[..., EXP_DIM:]
  t = jnp.stack([pose[..., 3], pose[..., 4], jnp.zeros_like(pose[..., 3])], axis=-1)
  return dict(exp=as_keypoints(v[..., :EXP_DIM]), pitch=pose[..., 0], yaw=pose[..., 1], roll=pose[..., 2],
              t=t, scale=pose[..., 5])


@flax.struct.dataclass
class MotionStats:
  """Normalization statistics: expression (global) and pose (per identity, in Playmate).

  Leading axes are allowed (e.g. pose statistics [B, 6] for a batch of identities); they broadcast
  against the motion vectors' leading axes.
  """
  exp_mean: jax.Array  # [63]
  exp_std: jax.Array   # [63]
  pose_mean: jax.Array  # [6]
  pose_std: jax.Array   # [6]

  @classmethod
  def from_motion(cls, v: jax.Array) -> "MotionStats":
    """Mean and standard deviation over all leading axes of motion vectors [..., 69]."""
    v = jnp.asarray(v, jnp.float32).reshape(-1, MOTION_DIM)
    mean, std = v.mean(axis=0), v.std(axis=0)
    return cls(exp_mean=mean[:EXP_DIM], exp_std=std[:EXP_DIM], pose_mean=mean[EXP_DIM:], pose_std=std[EXP_DIM:])


def _join(exp: jax.Array, pose: jax.Array) -> jax.Array:
  """[..., 69] from [..., 63] and [..., 6], broadcasting leading axes (e.g. per-identity pose statistics)."""
  exp, pose = jnp.asarray(exp, jnp.float32), jnp.asarray(pose, jnp.float32)
  lead = jnp.broadcast_shapes(exp.shape[:-1], pose.shape[:-1])
  return jnp.concatenate([jnp.broadcast_to(exp, lead + exp.shape[-1:]),
                          jnp.broadcast_to(pose, lead + pose.shape[-1:])], axis=-1)


def _mean_std(stats: MotionStats, floor: float) -> tuple[jax.Array, jax.Array]:
  return _join(stats.exp_mean, stats.pose_mean), jnp.maximum(_join(stats.exp_std, stats.pose_std), floor)


def normalize_motion(v: jax.Array, stats: MotionStats, std_floor: float = STD_FLOOR) -> jax.Array:
  """(v - mean) / max(std, std_floor) per coordinate of motion vectors [..., 69]."""
  mean, std = _mean_std(stats, std_floor)
  return (jnp.asarray(v, jnp.float32) - mean) / std


def denormalize_motion(v: jax.Array, stats: MotionStats, std_floor: float = STD_FLOOR) -> jax.Array:
  """Inverse of `normalize_motion`."""
  mean, std = _mean_std(stats, std_floor)
  return jnp.asarray(v, jnp.float32) * std + mean
