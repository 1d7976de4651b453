"""Face tracking for preprocessing: clips from scans (pure, no video), and the scan of a real cut."""

from __future__ import annotations

import numpy as np
import pytest

from playmate_jax.data import tracking
from playmate_jax.face import crop as crop_lib

S = tracking.TrackSettings(detect_every=3)
FACE = (100.0, 80.0, 60.0, 60.0)


def landmarks(box):
  """68 points filling a face box: jaw and brows on its edges, eye corners at 40% height, lip corners at 80%."""
  x, y, w, h = box
  u = np.linspace(0.0, 1.0, 17)
  pts = np.concatenate([np.stack([u, 0.2 + 0.8 * np.sin(np.pi * u) ** 0.5], -1),     # jaw 0-16
                        np.stack([np.linspace(0.1, 0.9, 10), np.zeros(10)], -1),      # brows 17-26
                        np.full((41, 2), 0.5)])                                          # the rest, inside
  pts[[36, 39, 42, 45]] = [[0.2, 0.4], [0.4, 0.4], [0.6, 0.4], [0.8, 0.4]]
  pts[[48, 54]] = [[0.35, 0.8], [0.65, 0.8]]
  return np.array([x, y]) + pts * np.array([w, h])


def make_scan(n, face=lambda i: [FACE], cuts=(), every=3):
  faces = {i: face(i) for i in range(n) if i % every == 0 or i == n - 1 or i in cuts or i + 1 in cuts}
  marks = {i: [landmarks(b) for b in boxes] for i, boxes in faces.items()}
  return tracking.Scan(num_frames=n, size=(480, 640), cuts=list(cuts), faces=faces, landmarks=marks)


def test_steady_face_is_one_clip_over_the_whole_video_with_one_square():
  jitter = np.random.default_rng(0).normal(0.0, 1.5, (300, 2))  # detector noise of a few pixels
  sc = make_scan(300, lambda i: [(FACE[0] + jitter[i, 0], FACE[1] + jitter[i, 1], 60.0, 60.0)])
  clips, why = tracking.find_clips(sc, S)
  assert why is None and len(clips) == 1
  assert (clips[0].start, clips[0].stop) == (0, 300)
  spec = crop_lib.CropSpec(scale=S.crop_scale, vy_ratio=S.crop_vy_ratio)
  expected = tracking.Clip(0, 300, crop_lib.crop_matrix(landmarks(FACE), spec))
  np.testing.assert_allclose(clips[0].matrix, expected.matrix, atol=0.5)  # the median face: noise averaged out
  np.testing.assert_allclose(clips[0].square, expected.square, atol=1.5)


def test_cut_splits_and_short_pieces_are_dropped():
  sc = make_scan(300, cuts=(60, 200))  # pieces of 60, 140, 100 frames; 60 < 3 s
  clips, _ = tracking.find_clips(sc, S)
  assert [(c.start, c.stop) for c in clips] == [(60, 200), (200, 300)]


def test_lost_face_splits_but_a_short_miss_is_bridged():
  long_loss = make_scan(400, lambda i: [] if 150 <= i < 200 else [FACE])
  clips, _ = tracking.find_clips(long_loss, S)
  assert [(c.start, c.stop) for c in clips] == [(0, 148), (201, 400)]
  short_miss = make_scan(400, lambda i: [] if i in (150, 153) else [FACE])
  clips, _ = tracking.find_clips(short_miss, S)
  assert [(c.start, c.stop) for c in clips] == [(0, 400)]


def test_face_jump_starts_a_new_clip_with_its_own_square():
  moved = (400.0, 80.0, 60.0, 60.0)
  clips, _ = tracking.find_clips(make_scan(300, lambda i: [FACE] if i < 150 else [moved]), S)
  assert [(c.start, c.stop) for c in clips] == [(0, 148), (150, 300)]
  assert clips[1].square[0] - clips[0].square[0] == pytest.approx(300.0)


def test_long_stretch_is_split_into_equal_parts_under_max_seconds():
  clips, _ = tracking.find_clips(make_scan(2000), S)  # 80 s
  lengths = [c.num_frames for c in clips]
  assert len(clips) == 3 and sum(lengths) == 2000 and max(lengths) <= 750 and max(lengths) - min(lengths) <= 1
  assert all(a.stop == b.start for a, b in zip(clips, clips[1:]))


def test_bystander_is_ignored_but_two_similar_faces_reject():
  small = (400.0, 300.0, 25.0, 25.0)
  clips, why = tracking.find_clips(make_scan(200, lambda i: [FACE, small]), S)
  assert why is None and len(clips) == 1
  twin = (400.0, 80.0, 58.0, 58.0)
  clips, why = tracking.find_clips(make_scan(200, lambda i: [FACE, twin]), S)
  assert clips == [] and why.kind == "two_faces"


def test_rejection_reasons():
  assert tracking.find_clips(make_scan(200, lambda i: []), S)[1].kind == "no_face"
  flicker = make_scan(300, lambda i: [FACE] if (i // 30) % 2 else [])  # 1.2 s on, 1.2 s off
  assert tracking.find_clips(flicker, S)[1].kind == "no_steady_face"


def test_scan_finds_a_cut_and_detects_on_both_sides_of_it():
  from skimage import data
  face = data.astronaut()[:256, 100:356]
  other = np.full_like(face, (30, 140, 60))
  frames = [face] * 10 + [other] * 10
  sc = tracking.scan(iter(frames), 1.0, S)
  assert sc.num_frames == 20 and sc.cuts == [10]
  assert {9, 10, 19} <= set(sc.faces) and sc.faces[9] and not sc.faces[10]
