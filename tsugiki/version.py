"""The package version, in a module of its own: the package root (``tsugiki/__init__.py``) re-exports it as
``tsugiki.__version__`` and also lazily imports the merge entry (:mod:`tsugiki.families`), so modules below
that entry (merging, vlm, diffusion) take the version from here, not from the root."""

__version__ = "0.1.0"
