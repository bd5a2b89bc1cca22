"""What collisions are compared with: baselines (random balls, null-space moves, code
inversion) and the approximation frontier (the closest input within a feature error)."""
