"""Vertex solvers: the gradient solver, the authors' scheme, the exact LP."""
