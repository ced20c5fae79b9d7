"""The accuracy plot of ``vopd eval``: full-image and crop accuracy, and their gap, per checkpoint step."""

from __future__ import annotations

from pathlib import Path


def plot_accuracy(rows: list[dict], out_png: str | Path, title: str = "Vision-OPD evaluation") -> Path:
    """Lines over ``row["step"]`` of ``full_acc``, ``crop_acc`` and ``gap`` (= crop - full); writes ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        ax.plot(steps, [r["full_acc"] for r in rows], "o-", label="full image")
        ax.plot(steps, [r["crop_acc"] for r in rows], "s-", label="crop")
        ax.plot(steps, [r["gap"] for r in rows], "^--", label="gap (crop - full)")
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        n = rows[0]["n"] if rows and "n" in rows[0] else None
        ax.set_title(f"{title}" + (f" (n={n})" if n else ""))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=120)
    finally:
        plt.close(fig)
    return out_png
