"""CLI verbs, one module per area. Each module has `register(subparsers)` that adds its verbs and
sets `func` on them; `tsugiki.cli` lists the modules explicitly (no registration by import)."""
