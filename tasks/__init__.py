"""Prefect tasks: thin wrappers, one ``collide`` stage call each.

Tasks take and return keys (paths, row numbers, small dicts), never tensors.
"""
