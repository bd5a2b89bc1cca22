"""Classifiers: the MNIST zoo (MLP, LeNet-5) with training and checkpoints, and VGG-16."""
