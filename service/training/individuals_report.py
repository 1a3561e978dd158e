"""The individuals section of RESULTS.md (e.g. NYT books): tables, the margin over the reward model, the context plot.

The section sits between markers, so `gpo eval-individuals` can rewrite it and `gpo eval`/`gpo report`
(which rewrite the group part of the page) keep it. Its text about the data comes from the description in the
meta (`meta["data"]`, service/training/data_description.py); records without one describe the shipped NYT books.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.training.data_description import number, shipped_ratings_description
from service.training.plots import plot_context_curve

START, END = "<!-- section:individuals -->", "<!-- /section:individuals -->"
LABELS = {
    "gpo": "GPO, ratings (ours)",
    "gpo_comparison": "GPO, comparisons: pair classifier (appendix H)",
    "gpo_comparison_bt": "GPO, comparisons: scores, Bradley-Terry loss",
    "content_factor": "content factor (GPO's readout alone: reward model + taste in content space)",
    "global_mean": "global mean (the item's mean over training people)",
    "context_mean": "the person's own context mean",
    "knn": "k nearest people by context agreement",
    "reward_model": "non-personalised reward model",
    "latent_factor": "latent factor (rating-matrix SVD)",
}
BASELINES = ("global_mean", "context_mean", "knn", "reward_model", "latent_factor")


def _values(records: Sequence[dict], method: str, k: int, metric: str) -> list[float]:
    return [r[metric] for r in records if r["method"] == method and r["n_context"] == k and r[metric] is not None]


def _fmt(vals: list[float], digits: int = 4) -> str:
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _t_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of per-seed differences."""
    from scipy.stats import t

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def margin(records: Sequence[dict], k: int, method: str = "gpo", over: str = "reward_model") -> dict:
    """GPO's pairwise-accuracy margin over a baseline: per seed, a 95% t-interval over seeds, and a paired
    bootstrap interval over test people (pooled over seeds)."""
    seeds = sorted({r["seed"] for r in records if r["method"] == method and r["n_context"] == k})
    per_seed, person_diffs = [], []
    for s in seeds:
        (a,) = [r for r in records if r["method"] == method and r["n_context"] == k and r["seed"] == s]
        (b,) = [r for r in records if r["method"] == over and r["n_context"] == k and r["seed"] == s]
        per_seed.append(a["pairwise"] - b["pairwise"])
        for p, v in a["per_person_pairwise"].items():
            w = b["per_person_pairwise"].get(p)
            if v is not None and w is not None:
                person_diffs.append(v - w)
    mean, lo, hi = _t_interval(per_seed)
    rng = np.random.default_rng(0)
    d = np.asarray(person_diffs)
    boots = [float(d[rng.integers(0, len(d), len(d))].mean()) for _ in range(2000)]
    return {
        "per_seed": per_seed,
        "mean": mean,
        "seed_ci95": [lo, hi],
        "people": len(d),
        "bootstrap_ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
    }


def individuals_markdown(records: Sequence[dict], meta: dict, figure: str | None) -> str:
    k_main = meta["main_context"]
    ks = sorted({r["n_context"] for r in records})
    methods = [m for m in LABELS if any(r["method"] == m for r in records)]
    seeds = sorted({r["seed"] for r in records})
    data = meta.get("data") or shipped_ratings_description()  # records saved before descriptions: NYT books
    item, scale = data["item_noun"], f"{number(data['scale'][0])}–{number(data['scale'][1])}"
    wording = f"“{data['wording']}”" if data["wording"] else "no question wording in the data"
    lines = [
        START,
        f"## Individuals: {data['name']} (a person is a group of one)",
        "",
        f"{data['people']} people rated {data['per_person'][0]}–{data['per_person'][1]} of {data['items']} "
        f"{item}s on a {scale} scale ({wording}; `{data['source']}`). People are split {meta['train_frac']:.0%} "
        f"meta-train (15% of them for validation: GPO's checkpoint; baseline settings are chosen by 5-fold "
        f"cross-validation over all meta-train people) / {1 - meta['train_frac']:.0%} held out, for seeds "
        f"{', '.join(map(str, seeds))}. A held-out person's context is k random {item}s they rated; every other "
        f"{item} they rated is a target. All methods see the same people and draws. Metrics per person, then "
        f"averaged: pairwise accuracy (pairs of target {item}s rated differently, ordered right), Spearman, RMSE "
        f"on the {scale} scale, exact accuracy (the nearest level to the predicted score is the rating; arg-max "
        f"accuracy of the rating read as a {data['levels']}-way choice).",
        "",
        f"Command: `{meta['command']}` ({meta['wall_s'] / 60:.0f} min on this 2-core CPU).",
        "",
        f"### {k_main} context items (mean ± sd over seeds)",
        "",
        "| method | seeds | pairwise accuracy | Spearman | RMSE | exact |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        n_seeds = len({r["seed"] for r in records if r["method"] == m and r["n_context"] == k_main})
        lines.append(
            f"| {LABELS[m]} | {n_seeds} | {_fmt(_values(records, m, k_main, 'pairwise'))} | "
            f"{_fmt(_values(records, m, k_main, 'spearman'))} | {_fmt(_values(records, m, k_main, 'rmse'), 3)} | "
            f"{_fmt(_values(records, m, k_main, 'exact'), 3)} |"
        )
    lines += ["", "### Pairwise accuracy against the number of context items (mean over seeds)", ""]
    lines += ["| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for m in methods:
        cells = [_values(records, m, k, "pairwise") for k in ks]
        lines.append(f"| {LABELS[m]} | " + " | ".join(f"{np.mean(c):.4f}" if c else "—" for c in cells) + " |")
    lines.append("")
    for k in ks:
        g = margin(records, k)
        best_base = max(BASELINES, key=lambda b: np.mean(_values(records, b, k, "pairwise") or [0.0]))
        gb = margin(records, k, over=best_base)
        meta.setdefault("margins", {})[str(k)] = {"over_reward_model": g, f"over_{best_base}": gb}
    g = meta["margins"][str(k_main)]["over_reward_model"]
    lines += [
        f"**Margin over the non-personalised reward model at k={k_main}:** {g['mean']:+.4f} pairwise accuracy "
        f"(per seed {', '.join(f'{d:+.4f}' for d in g['per_seed'])}; 95% t-interval over seeds "
        f"[{g['seed_ci95'][0]:+.4f}, {g['seed_ci95'][1]:+.4f}]; paired bootstrap over {g['people']} "
        f"held-out person-draws [{g['bootstrap_ci95'][0]:+.4f}, {g['bootstrap_ci95'][1]:+.4f}]).",
        "",
        "| k | GPO − reward model (95% CI over seeds) | GPO − best baseline at that k (95% CI over seeds) |",
        "|---|---|---|",
    ]
    for k in ks:
        ms = meta["margins"][str(k)]
        (bname,) = [n for n in ms if n != "over_reward_model"] or ["over_reward_model"]
        r, b = ms["over_reward_model"], ms[bname]
        lines.append(
            f"| {k} | {r['mean']:+.4f} [{r['seed_ci95'][0]:+.4f}, {r['seed_ci95'][1]:+.4f}] | "
            f"{b['mean']:+.4f} [{b['seed_ci95'][0]:+.4f}, {b['seed_ci95'][1]:+.4f}] ({bname[5:]}) |"
        )
    lines += ["", *_reading(records, meta, k_main, ks, data)]
    if figure:
        lines += ["", f"![pairwise accuracy against context size]({figure})"]
    lines += ["", *meta.get("notes", []), "", END]
    return "\n".join(lines) + "\n"


def _reading(records: Sequence[dict], meta: dict, k_main: int, ks: list[int], data: dict) -> list[str]:
    """What the tables say, with their numbers; what was measured on the shipped data only for it."""

    def mean(method: str, k: int) -> float:
        vals = _values(records, method, k, "pairwise")
        return float(np.mean(vals)) if vals else float("nan")

    k_max = max(ks)
    runs = {k: v for k, v in meta.get("training", {}).items() if k.startswith("gpo/")}
    kept = sum(1 for v in runs.values() if v.get("best_step", 0) > 0)
    item, shipped = data["item_noun"], data.get("shipped", False)
    history = (
        f" With about 120 meta-training people of {data['per_person'][0]}–{data['per_person'][1]} ratings each, it "
        "has not learnt anything the closed-form readout lacks that holds up on held-out people. An earlier "
        "version without this guard kept whichever checkpoint validated best, and it lost 0.001–0.005 to its own "
        "readout on held-out people (3 seeds)."
    )
    out = [
        "Reading:",
        f"- GPO's prior gives every {item} the non-personalised reward model's score as its mean (the same ridge "
        f"regression on the {item}'s embedding as the baseline, fitted on the same people) and its loadings on the "
        "main directions of the LLM's content space. The ridge readout fits the person's taste along those "
        "directions to their context in closed form, and the transformer learns corrections on top. So at k=0 "
        "GPO is the reward model, and every context item moves it towards the person.",
        f"- All of GPO's edge over the reward model is that readout. The readout alone (content factor) scores "
        f"{mean('content_factor', k_main):.4f} at k={k_main} and {mean('content_factor', k_max):.4f} at "
        f"k={k_max}. The transformer's corrections are kept only when they beat the readout on the validation "
        f"people by more than one standard error of the paired per-person difference. That happened in {kept} of "
        f"{len(runs)} seeds; elsewhere GPO is its readout. On average the transformer adds "
        f"{mean('gpo', k_main) - mean('content_factor', k_main):+.4f} at k={k_main} and "
        f"{mean('gpo', k_max) - mean('content_factor', k_max):+.4f} at k={k_max}." + (history if shipped else ""),
    ]
    if _values(records, "gpo_comparison", k_main, "pairwise") and _values(
        records, "gpo_comparison_bt", k_main, "pairwise"
    ):
        diffs = []
        for k in ks:
            if k < 2 or not _values(records, "gpo_comparison", k, "pairwise"):
                continue  # one context item makes no pair: both answer 1/2
            m = margin(records, k, method="gpo_comparison_bt", over="gpo_comparison")
            diffs.append(f"k={k} {m['mean']:+.4f} [{m['bootstrap_ci95'][0]:+.4f}, {m['bootstrap_ci95'][1]:+.4f}]")
        out.append(
            f"- For comparisons, scalar scores trained with a Bradley-Terry loss score "
            f"{mean('gpo_comparison_bt', k_main):.4f} at k={k_main} and {mean('gpo_comparison_bt', k_max):.4f} at "
            f"k={k_max}. The appendix-H pair classifier scores {mean('gpo_comparison', k_main):.4f} and "
            f"{mean('gpo_comparison', k_max):.4f}. Score head minus pair head, with a paired bootstrap 95% interval "
            f"over held-out people: {'; '.join(diffs)}. "
            + (
                "Both are below the rating model, which gets the magnitudes as well as the order from the same k "
                f"{item}s. "
                if max(mean("gpo_comparison_bt", k_main), mean("gpo_comparison", k_main)) < mean("gpo", k_main)
                else f"At k={k_main} the better of them is at or above the rating model. "
            )
            + f"With one context {item} there is no pair: the pair head answers 1/2, and a score head with the pair "
            "readout ranks by the reward model."
        )
    out.append(
        "- A person's prior features come from other people only, in folds. Leave-one-out priors leaked: a "
        "leave-one-out item mean is the person's own rating shifted by a per-item constant that the network "
        "can learn."
        + (
            " With them, the comparison model measured 0.87 validation pairwise accuracy against 0.56 on held-out "
            "people."
            if shipped
            else ""
        )
        + " The test in `tests/training/test_individuals.py` pins that a person's features do not move with their "
        "own ratings."
    )
    return out


def splice(page: str, section: str) -> str:
    """`page` with its individuals section replaced by `section` (appended when it has none)."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", flags=re.S)
    if pattern.search(page):
        return pattern.sub(lambda _: section, page)
    return page.rstrip("\n") + "\n\n" + section


def section_of(page: str) -> str | None:
    m = re.search(re.escape(START) + r".*?" + re.escape(END) + r"\n?", page, flags=re.S)
    return m.group(0) if m else None


def write_individuals_report(records: Sequence[dict], meta: dict, out: Path) -> Path:
    """Rewrite the individuals section of `out` (RESULTS.md) and its figure in results/."""
    out = Path(out)
    fig_dir = out.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    plot_context_curve(records, fig_dir / "individuals_context.png", LABELS)
    section = individuals_markdown(records, meta, "results/individuals_context.png")
    page = out.read_text() if out.exists() else "# Results\n"
    out.write_text(splice(page, section))
    return out
