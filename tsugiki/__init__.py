"""tsugiki (接ぎ木, "grafting"): evolve merged models and benchmark them."""

__version__ = "0.1.0"
