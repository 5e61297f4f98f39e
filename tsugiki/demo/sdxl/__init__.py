"""The demo's SDXL stage (EvoSDXL-JP in miniature): ``stage`` runs it, ``models`` builds the tiny SDXL
sources, ``data`` draws the items and trains the VAE, UNets and the judge."""
