"""The heatmap of the PS-like kinds (``ps``, ``sdxl_blocks``): the best candidate's merge parameters, one
panel per parameter, models by layer group or UNet block (as in Fig. 3 of Akiba et al. 2024,
arXiv:2403.13187), from the Problem's ``details`` (``matrices``, optional ``xlabel``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tsugiki.evolution.report import figure

HEATMAP = "ps_heatmap.png"
#: the kinds' ``plot_captions``
CAPTIONS = {HEATMAP: "Best candidate's merge parameters per model and layer group / UNet block."}


def heatmap_plots(details: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """The kinds' ``plots``: ``out_dir/ps_heatmap.png``."""
    return [plot_ps(details, Path(out_dir) / HEATMAP)]


def plot_ps(details: dict, out: Path) -> Path:
    mats = details["matrices"]
    fig = figure(4 + 2.2 * len(mats), 1.5 + 0.5 * len(next(iter(mats.values()))["rows"]))
    for k, (pname, m) in enumerate(mats.items(), 1):
        ax = fig.add_subplot(1, len(mats), k)
        lo, hi = m["bounds"]
        im = ax.imshow(m["values"], vmin=lo, vmax=hi, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(m["cols"])), m["cols"])
        ax.set_yticks(range(len(m["rows"])), m["rows"])
        ax.set_xlabel(details.get("xlabel", "layer group"))
        ax.set_title(pname)
        for i, row in enumerate(m["values"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < (lo + hi) / 2 else "k")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(out)
    return out
