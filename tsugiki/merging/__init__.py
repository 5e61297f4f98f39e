"""Merge engine: pure tensor kernels, lazy safetensors I/O, recipes, architecture maps."""
