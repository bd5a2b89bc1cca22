"""Patches: extraction into Zarr with Dask, kNN search over them, and compositions of them."""
