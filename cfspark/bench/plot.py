"""An optional PNG of test metric against fit seconds; needs matplotlib, which is not a dependency."""

from __future__ import annotations


def plot_curves(record: dict, path: str) -> bool:
    """Write the plot and return True, or return False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metric = "rmse" if record["loss"] == "mse" else "auc"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in (("cfspark", record["cfspark"]["curve"]), ("Spark ALS", record["als"]["curve"])):
        ax.plot([p["fit_seconds"] for p in curve], [p[metric] for p in curve], marker="o", label=name)
    ax.set_xlabel("fit seconds")
    ax.set_ylabel(f"test {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
