"""Training the demo models on the procedural shapes world: ``python -m t2vserve.train``."""
