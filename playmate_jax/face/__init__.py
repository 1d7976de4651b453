"""Faces: detection with landmarks (MediaPipe's models by default, LivePortrait's own with --face-models), and
LivePortrait's crop computed from the landmarks. Every command that finds a face goes through `FaceFinder`."""
