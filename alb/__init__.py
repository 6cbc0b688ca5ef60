"""The composition root: the ``alb`` CLI, the demo and the simulated-fleet fallback."""
