"""The plots of ``vopd eval``: full-image and crop accuracy, and their gap, per checkpoint step; and the
benchmark accuracies next to the paper's."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _figure(out_png: str | Path, figsize: tuple[float, float]):
    """A matplotlib axes (headless backend) whose figure is written to ``out_png`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=120)
    finally:
        plt.close(fig)


def plot_accuracy(rows: list[dict], out_png: str | Path, title: str = "Vision-OPD evaluation") -> Path:
    """Lines over ``row["step"]`` of ``full_acc``, ``crop_acc`` and ``gap`` (= crop - full); writes ``out_png``."""
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    with _figure(out_png, (7, 4.5)) as ax:
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
    return Path(out_png)


def plot_benchmarks(results: dict[str, dict], out_png: str | Path) -> Path:
    """Bars of each benchmark's accuracy (and the macro average of the six) next to the paper's columns."""
    from megatron_vopd.eval.scoring import PAPER, macro

    names = list(results) + (["macro"] if macro(results) is not None else [])
    ours = [results[n]["accuracy"] if n in results else macro(results) for n in names]
    columns = [("ours", ours)] + [(c, [PAPER[c].get(n, float("nan")) for n in names]) for c in PAPER]
    width = 0.8 / len(columns)
    with _figure(out_png, (max(6, 1.4 * len(names) + 2), 4.5)) as ax:
        for i, (label, values) in enumerate(columns):
            ax.bar([x + (i - (len(columns) - 1) / 2) * width for x in range(len(names))], values, width, label=label)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Benchmarks: this checkpoint and the paper's Table 1")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return Path(out_png)
