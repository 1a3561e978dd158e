"""Figures of the results page (RESULTS.md): matplotlib set up for files only, and every plot on the page."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def load_pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display on servers and CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay the figure out, write it at 110 dpi and close it (pyplot keeps every open figure alive otherwise)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    load_pyplot().close(fig)


def mean_alignment(records: Sequence[dict], **match) -> float | None:
    """Mean alignment of the group records whose fields equal every `match` (None when no record does)."""
    vals = [r["alignment"] for r in records if all(r.get(k) == v for k, v in match.items())]
    return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------------------------------------- groups (OpinionQA)


def plot_bars(records: Sequence[dict], path: Path, n_context: int = 20) -> None:
    """Mean alignment per method and split (bars), all questions and the contentious subset."""
    plt = load_pyplot()
    rows = [r for r in records if r["protocol"] == "groups" and r["n_context"] == n_context]
    splits = sorted({r["split"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows if r["subset"] == "all"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    for ax, subset in zip(axes, ("all", "contentious"), strict=True):
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = [mean_alignment(rows, method=m, split=s, subset=subset) or 0.0 for s in splits]
            ax.bar(np.arange(len(splits)) + i * width, vals, width, label=m)
        ax.set_xticks(np.arange(len(splits)) + 0.4 - width / 2, [f"{s:.0%} train groups" for s in splits])
        ax.set_title(f"{subset} questions ({n_context} context questions)")
        ax.set_ylim(0.75, 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("alignment (mean over seeds)")
    axes[1].legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def plot_curve(records: Sequence[dict], path: Path) -> None:
    """Alignment against the number of context questions (mean over seeds)."""
    plt = load_pyplot()
    rows = [r for r in records if r["protocol"] == "groups" and r["subset"] == "all"]
    sizes_by_method: dict[str, set[int]] = defaultdict(set)
    splits = {r["split"] for r in rows if r["n_context"] != 20}
    if not splits:
        return
    split = min(splits)
    rows = [r for r in rows if r["split"] == split]
    for r in rows:
        sizes_by_method[r["method"]].add(r["n_context"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, sizes in sizes_by_method.items():
        ns = sorted(sizes)
        if len(ns) < 3:
            continue
        ax.plot(ns, [mean_alignment(rows, method=m, n_context=n) for n in ns], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("context questions")
    ax.set_ylabel("alignment (all questions)")
    ax.set_title(f"Context-size curve ({split:.0%} train groups)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_examples(examples: Sequence[dict], path: Path) -> None:
    """Predicted vs true distributions for a few (group, question) pairs, as the paper's figure 4."""
    if not examples:
        return
    plt = load_pyplot()
    n = len(examples)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.3 * rows), squeeze=False)
    for ax, ex in zip(axes.flat, examples, strict=False):
        k = len(ex["options"])
        x = np.arange(k)
        series = [("true", ex["true"]), ("GPO", ex["gpo"])] + [(m, ex[m]) for m in ("mixture",) if m in ex]
        w = 0.8 / len(series)
        for i, (name, vals) in enumerate(series):
            ax.bar(x + i * w, vals, w, label=name)
        ax.set_xticks(x + 0.4 - w / 2, [o[:18] for o in ex["options"]], rotation=25, fontsize=7)
        ax.set_title(f"{ex['group']}: {ex['question'][:55]}", fontsize=8)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- individuals


def _pairwise_values(records: Sequence[dict], method: str, k: int) -> list[float]:
    return [
        r["pairwise"] for r in records if r["method"] == method and r["n_context"] == k and r["pairwise"] is not None
    ]


def plot_context_curve(records: Sequence[dict], path: Path, labels: Mapping[str, str]) -> None:
    """Individuals: pairwise accuracy against the number of context items (mean over seeds), one line per method
    of `labels` (method -> legend label, in legend order) that the records hold."""
    plt = load_pyplot()
    methods = [m for m in labels if any(r["method"] == m for r in records)]
    ks = sorted({r["n_context"] for r in records})
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for m in methods:
        ys = [np.mean(vals) if (vals := _pairwise_values(records, m, k)) else np.nan for k in ks]
        style = "-o" if m.startswith("gpo") else "--."
        ax.plot(ks, ys, style, label=labels[m], linewidth=2 if m.startswith("gpo") else 1)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("items the held-out person rated in the context")
    ax.set_ylabel("pairwise accuracy on their other items")
    ax.set_title("NYT books, held-out people (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
