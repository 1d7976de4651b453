"""Motion-space math: parity with LivePortrait's reference vectors, and its algebraic properties."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from playmate_jax import motion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANGLES = ("pitch", "yaw", "roll")


@pytest.fixture(scope="module")
def reference(parity_dir):
  with np.load(os.path.join(parity_dir, "liveportrait", "reference.npz")) as f:
    return dict(f)


def random_motion(key, shape):
  """Motion fields with realistic ranges: angles in degrees (|yaw| < 80), small exp and t, scale near 1.5."""
  k = jax.random.split(key, 6)
  return dict(
      exp=0.05 * jax.random.normal(k[0], shape + (21, 3)),
      pitch=jax.random.uniform(k[1], shape, minval=-60, maxval=60),
      yaw=jax.random.uniform(k[2], shape, minval=-80, maxval=80),
      roll=jax.random.uniform(k[3], shape, minval=-60, maxval=60),
      t=0.1 * jax.random.normal(k[4], shape + (3,)),
      scale=jax.random.uniform(k[5], shape, minval=1.2, maxval=1.9))


@pytest.mark.parity
@pytest.mark.parametrize("who", ["source", "driving"])
def test_parity_degrees(reference, who):
  for a in ANGLES:
    got = motion.bins_to_degrees(reference[f"{who}_{a}"])
    # Values pass through ~100 before the -97.5 offset: float32 resolution there is 7.6e-6.
    np.testing.assert_allclose(got, reference[f"{who}_{a}_degree"], rtol=0, atol=3e-5)


@pytest.mark.parity
@pytest.mark.parametrize("who", ["source", "driving"])
def test_parity_rotation(reference, who):
  got = motion.rotation_matrix(*(reference[f"{who}_{a}_degree"] for a in ANGLES))
  np.testing.assert_allclose(got, reference[f"{who}_rotation"], rtol=0, atol=3e-7)


@pytest.mark.parity
@pytest.mark.parametrize("who", ["source", "driving"])
def test_parity_kp_transformed(reference, who):
  r = reference
  got = motion.transform_keypoints(r[f"{who}_kp"], *(r[f"{who}_{a}_degree"] for a in ANGLES), r[f"{who}_exp"],
                                   r[f"{who}_t"], r[f"{who}_scale"][:, 0])
  np.testing.assert_allclose(got, r[f"{who}_kp_transformed"], rtol=0, atol=3e-7)
  # The same through the rotation-matrix form.
  got = motion.transform_keypoints_with_matrix(r[f"{who}_kp"], r[f"{who}_rotation"], r[f"{who}_exp"],
                                               r[f"{who}_t"], r[f"{who}_scale"][:, 0])
  np.testing.assert_allclose(got, r[f"{who}_kp_transformed"], rtol=0, atol=3e-7)


@pytest.mark.parity
@pytest.mark.parametrize("who", ["source", "driving"])
def test_parity_matrix_to_degrees(reference, who):
  got = motion.matrix_to_degrees(reference[f"{who}_rotation"])
  for a, g in zip(ANGLES, got):
    np.testing.assert_allclose(g, reference[f"{who}_{a}_degree"], rtol=0, atol=1e-4)


def test_bins_to_degrees_range_and_peak():
  logits = jnp.full((3, 66), -1e4).at[jnp.arange(3), jnp.array([0, 32, 65])].set(0.0)
  np.testing.assert_allclose(motion.bins_to_degrees(logits), [-97.5, -1.5, 97.5], atol=1e-5)


def test_rotation_orthonormal_det_one():
  m = random_motion(jax.random.key(0), (4, 5))
  rot = motion.rotation_matrix(m["pitch"], m["yaw"], m["roll"])
  assert rot.shape == (4, 5, 3, 3)
  np.testing.assert_allclose(rot @ jnp.swapaxes(rot, -1, -2), jnp.broadcast_to(jnp.eye(3), rot.shape), atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.det(rot), 1.0, atol=1e-6)


def test_rotation_elementary_axes():
  # x @ R == (Rz Ry Rx x^T)^T: pitch alone turns y into z, yaw turns z into x, roll turns x into y.
  e = jnp.eye(3)
  z = jnp.zeros(())
  np.testing.assert_allclose(e[1] @ motion.rotation_matrix(90.0, z, z), [0, 0, 1], atol=1e-6)
  np.testing.assert_allclose(e[2] @ motion.rotation_matrix(z, 90.0, z), [1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(e[0] @ motion.rotation_matrix(z, z, 90.0), [0, 1, 0], atol=1e-6)


def test_degrees_matrix_round_trip():
  m = random_motion(jax.random.key(1), (64,))
  rot = motion.rotation_matrix(m["pitch"], m["yaw"], m["roll"])
  for a, g in zip(ANGLES, motion.matrix_to_degrees(rot)):
    np.testing.assert_allclose(g, m[a], atol=2e-3)
  np.testing.assert_allclose(motion.rotation_matrix(*motion.matrix_to_degrees(rot)), rot, atol=1e-6)


def test_pack_unpack_round_trip():
  m = random_motion(jax.random.key(2), (2, 7))
  v = motion.pack_motion(m["exp"], m["pitch"], m["yaw"], m["roll"], m["t"], m["scale"])
  assert v.shape == (2, 7, motion.MOTION_DIM) and motion.MOTION_DIM == 69
  np.testing.assert_array_equal(v[..., :63], m["exp"].reshape(2, 7, 63))
  np.testing.assert_array_equal(v[..., 63:], jnp.stack([m["pitch"], m["yaw"], m["roll"], m["t"][..., 0],
                                                        m["t"][..., 1], m["scale"]], -1))
  u = motion.unpack_motion(v)
  for k in ("exp", "pitch", "yaw", "roll", "scale"):
    np.testing.assert_array_equal(u[k], m[k])
  np.testing.assert_array_equal(u["t"][..., :2], m["t"][..., :2])
  np.testing.assert_array_equal(u["t"][..., 2], 0.0)
  np.testing.assert_array_equal(motion.pack_motion(**u), v)


def test_normalize_round_trip_and_constant_coordinates():
  v = jax.random.normal(jax.random.key(3), (100, 69)) * 3.0 + 1.0
  v = v.at[:, 5].set(0.7).at[:, 66].set(-2.0)  # a constant exp coordinate and a constant pose coordinate
  stats = motion.MotionStats.from_motion(v)
  n = motion.normalize_motion(v, stats)
  assert jnp.all(jnp.isfinite(n))
  np.testing.assert_allclose(n[:, 5], 0.0, atol=1e-6)
  np.testing.assert_allclose(n[:, 66], 0.0, atol=1e-6)
  keep = np.setdiff1d(np.arange(69), [5, 66])
  np.testing.assert_allclose(n[:, keep].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(n[:, keep].std(0), 1.0, atol=1e-4)
  np.testing.assert_allclose(motion.denormalize_motion(n, stats), v, atol=1e-5)


def test_normalize_per_identity_pose_stats_broadcast():
  v = jax.random.normal(jax.random.key(4), (3, 10, 69))
  stats = motion.MotionStats(exp_mean=jnp.zeros(63), exp_std=jnp.ones(63),
                             pose_mean=jnp.arange(18.0).reshape(3, 1, 6), pose_std=jnp.full((3, 1, 6), 2.0))
  n = motion.normalize_motion(v, stats)
  np.testing.assert_allclose(n[..., :63], v[..., :63])
  np.testing.assert_allclose(n[1, :, 63:], (v[1, :, 63:] - jnp.arange(6.0, 12.0)) / 2.0, atol=1e-6)
  np.testing.assert_allclose(motion.denormalize_motion(n, stats), v, atol=1e-6)


def test_stats_are_a_pytree():
  stats = motion.MotionStats.from_motion(jnp.ones((4, 69)))
  assert len(jax.tree_util.tree_leaves(stats)) == 4
  jax.jit(motion.normalize_motion)(jnp.ones((2, 69)), stats)


def test_relative_motion_identity_when_driving_is_first_frame():
  src = random_motion(jax.random.key(5), (6,))
  drv = random_motion(jax.random.key(6), (6,))
  out = motion.relative_motion(src, drv, drv)
  np.testing.assert_array_equal(out["exp"], src["exp"])
  np.testing.assert_array_equal(out["scale"], src["scale"])
  np.testing.assert_array_equal(out["t"][..., :2], src["t"][..., :2])
  np.testing.assert_array_equal(out["t"][..., 2], 0.0)
  np.testing.assert_allclose(out["rotation"], motion.rotation_matrix(src["pitch"], src["yaw"], src["roll"]),
                             atol=1e-6)
  for a in ANGLES:
    np.testing.assert_allclose(out[a], src[a], atol=2e-3)


def test_relative_motion_composition():
  src, drv, first = (random_motion(jax.random.key(i), (5,)) for i in (7, 8, 9))
  out = motion.relative_motion(src, drv, first)
  rot = {k: motion.rotation_matrix(m["pitch"], m["yaw"], m["roll"]) for k, m in
         (("s", src), ("d", drv), ("d0", first))}
  want = rot["d"] @ jnp.swapaxes(rot["d0"], -1, -2) @ rot["s"]
  np.testing.assert_allclose(out["rotation"], want, atol=1e-6)
  np.testing.assert_allclose(out["exp"], src["exp"] + drv["exp"] - first["exp"], atol=1e-6)
  np.testing.assert_allclose(out["scale"], src["scale"] * drv["scale"] / first["scale"], rtol=1e-6)
  np.testing.assert_allclose(out["t"][..., :2], (src["t"] + drv["t"] - first["t"])[..., :2], atol=1e-6)
  # A pure-pose driving change (same exp, t, scale) composes the head rotation only.
  same = dict(first, pitch=first["pitch"] + 10.0)
  out2 = motion.relative_motion(src, same, first)
  np.testing.assert_allclose(out2["exp"], src["exp"], atol=1e-7)
  # The re-derived angles reproduce the composed rotation, so the result can be re-packed.
  np.testing.assert_allclose(motion.rotation_matrix(out["pitch"], out["yaw"], out["roll"]), out["rotation"],
                             atol=1e-5)
  v = motion.pack_motion(out["exp"], out["pitch"], out["yaw"], out["roll"], out["t"], out["scale"])
  assert v.shape == (5, 69)


def test_relative_motion_accepts_rotation_or_degrees():
  src, drv, first = (random_motion(jax.random.key(i), (3,)) for i in (10, 11, 12))
  with_rot = [dict(m, rotation=motion.rotation_matrix(m["pitch"], m["yaw"], m["roll"])) for m in (src, drv, first)]
  a, b = motion.relative_motion(src, drv, first), motion.relative_motion(*with_rot)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6)


def test_batching_invariance():
  m = random_motion(jax.random.key(13), (3, 4))
  kp = 0.3 * jax.random.normal(jax.random.key(14), (3, 4, 21, 3))
  fn = jax.jit(lambda kp, m: motion.transform_keypoints(kp, m["pitch"], m["yaw"], m["roll"], m["exp"], m["t"],
                                                        m["scale"]))
  batched = fn(kp, m)
  first = random_motion(jax.random.key(15), (3, 4))
  rel = motion.relative_motion(m, first, first)
  for i in range(3):
    for j in range(4):
      one = jax.tree.map(lambda x: x[i, j], m)
      single = motion.transform_keypoints(kp[i, j], one["pitch"], one["yaw"], one["roll"], one["exp"], one["t"],
                                          one["scale"])
      np.testing.assert_allclose(batched[i, j], single, atol=1e-6)
      rel1 = motion.relative_motion(one, jax.tree.map(lambda x: x[i, j], first),
                                    jax.tree.map(lambda x: x[i, j], first))
      np.testing.assert_allclose(rel["rotation"][i, j], rel1["rotation"], atol=1e-6)
      np.testing.assert_allclose(motion.mouth_opening(m["exp"])[i, j], motion.mouth_opening(one["exp"]))


def test_transform_keypoints_drops_tz_and_scales():
  kp = 0.3 * jax.random.normal(jax.random.key(16), (21, 3))
  z = jnp.zeros(())
  t = jnp.array([0.1, -0.2, 5.0])
  x = motion.transform_keypoints(kp, z, z, z, jnp.zeros((21, 3)), t, jnp.asarray(2.0))
  np.testing.assert_allclose(x, 2.0 * kp + jnp.array([0.1, -0.2, 0.0]), atol=1e-6)


def test_mouth_opening_follows_liveportrait_lip_open_edit():
  exp = 0.02 * jax.random.normal(jax.random.key(17), (4, 21, 3))
  base = motion.mouth_opening(exp)
  assert base.shape == (4,)
  np.testing.assert_allclose(base, exp[:, 19, 1] - exp[:, 17, 1])
  # LivePortrait's "lip close <-> open" edit with strength v: kp 19 y += 1e-3 v, 19 z += 1e-4 v, 17 y -= 1e-4 v.
  v = 50.0
  opened = exp.at[:, 19, 1].add(1e-3 * v).at[:, 19, 2].add(1e-4 * v).at[:, 17, 1].add(-1e-4 * v)
  np.testing.assert_allclose(motion.mouth_opening(opened) - base, 1.1e-3 * v, rtol=1e-4)
  # Flattened exp gives the same; keypoints outside the lip pair do not matter.
  np.testing.assert_allclose(motion.mouth_opening(exp.reshape(4, 63)), base)
  np.testing.assert_allclose(motion.mouth_opening(exp.at[:, 11].add(1.0)), base)
