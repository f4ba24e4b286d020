"""Data layer: FSDD and MNIST loaders, leak-free splits, pair construction, the shipped sample."""
