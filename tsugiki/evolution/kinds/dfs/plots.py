"""The plot of the DFS kinds (``dfs``, ``ps_dfs``): the best inference path (source layer per path
position, coloured by model) beside the scaling matrix W (as in Fig. 4 of Akiba et al. 2024,
arXiv:2403.13187), from the Problem's ``details`` (``models``, ``path``, ``scales``)."""

from __future__ import annotations

from pathlib import Path

from tsugiki.evolution.report import figure

PATH_PLOT = "dfs_path.png"
CAPTIONS = {PATH_PLOT: "Best DFS inference path (source layer per position) and scaling matrix W."}


def plot_dfs(details: dict, out: Path) -> Path:
    models = details["models"]
    fig = figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    path = details["path"]
    ax.plot(range(len(path)), [p["layer"] for p in path], color="lightgray", zorder=1)
    for m in models:
        pts = [(k, p["layer"]) for k, p in enumerate(path) if p["model"] == m]
        if pts:
            ax.scatter(*zip(*pts), color=colors[m], label=m, zorder=2, s=25)
    from matplotlib.ticker import MaxNLocator  # matplotlib only when plots are drawn

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("position on the inference path")
    ax.set_ylabel("source layer")
    ax.set_title(f"inference path ({len(path)} layers)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    im = ax2.imshow(details["scales"], cmap="coolwarm", vmin=0, vmax=2)
    ax2.set_xticks(range(len(models)), models, rotation=30)
    ax2.set_yticks(range(len(models)), models)
    ax2.set_xlabel("to model j")
    ax2.set_ylabel("from model i")
    ax2.set_title("scaling matrix W")
    for i, row in enumerate(details["scales"]):
        for j, v in enumerate(row):
            ax2.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax2, shrink=0.8)
    fig.savefig(out)
    return out
