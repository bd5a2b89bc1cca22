"""Experiments: each a config and a plan of polytope jobs, run by one engine."""
