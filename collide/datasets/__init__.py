"""Datasets: MNIST (IDX files, fetched offline-first) and ImageNet-style image folders."""
