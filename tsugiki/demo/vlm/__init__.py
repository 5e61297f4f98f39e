"""The demo's VLM stage (EvoVLM-JP in miniature): ``stage`` runs it, ``models`` builds the LLaVA around
the real base (vision tower and projector aligned on English questions), ``scenes`` draws the shapes
and asks about them."""
