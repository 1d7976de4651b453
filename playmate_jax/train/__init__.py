"""Training: device mesh and shardings, train state and step, Orbax checkpoints, metrics, evaluation, the loop."""
