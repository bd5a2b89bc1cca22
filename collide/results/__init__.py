"""Results: the Zarr store and its stage keys, evaluation, tables, figures, report and verify."""
