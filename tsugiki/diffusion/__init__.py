"""SDXL UNet merge/swap by block; text encoders and VAE untouched."""
