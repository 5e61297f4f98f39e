"""Silence Hugging Face libraries' per-load progress bars (and notices) inside our own progress bars."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def hf_progress_bars_off(*, diffusers: bool = False, errors_only: bool = False):
    """No "Loading weights" / "Writing model shards" bars from transformers (and diffusers when asked)
    while the block runs; ``errors_only`` also lowers their log verbosity to errors (e.g. accelerate
    notices). Everything is restored afterwards."""
    from transformers.utils import logging as t_logging

    libs = [t_logging]
    if diffusers:
        from diffusers.utils import logging as d_logging

        libs.append(d_logging)
    saved = [(lib.is_progress_bar_enabled(), lib.get_verbosity()) for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
        if errors_only:
            lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, (bars, level) in zip(libs, saved):
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()
