"""Issue 15: does the known-item prior (an item's training mean shrunk towards the text estimate) help GPO?

Two `gpo eval-individuals` runs on the same seeds (same people splits and context draws), one per prior mean:

    gpo eval-individuals --seeds 0,1,2,3,4,5,6,7,8,9 --no-comparison --threads 1 --time-budget-s 60 \\
        --prior-mean reward --json runs/prior-reward.json
    gpo eval-individuals ... --prior-mean shrunk --json runs/prior-shrunk.json
    python benchmarks/experiments/known_item_prior.py runs/prior-reward.json runs/prior-shrunk.json

(or --prior-mean auto for the second: what it chose per seed is printed too)

prints, for each context size, each method's held-out pairwise accuracy per seed under both priors and the paired
difference (second minus first): mean, 95% t-interval over seeds, paired bootstrap interval over test people.
Only the methods whose prior mean changes differ (GPO and its readout alone, `content_factor`); the other
baselines are printed as a check that both runs saw the same people.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.training.individuals_report import margin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path, help="records of the baseline prior (e.g. --prior-mean reward)")
    ap.add_argument("second", type=Path, help="records of the new prior (e.g. --prior-mean shrunk or auto)")
    ap.add_argument("--methods", default="gpo,content_factor,reward_model,global_mean")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in (args.first, args.second)]
    names = [r["meta"]["train_config"]["prior_mean"] for r in runs]
    assert names[0] != names[1], f"both runs used prior_mean {names[0]!r}"
    records = [
        {**rec, "method": f"{rec['method']}/{name}"}
        for run, name in zip(runs, names, strict=True)
        for rec in run["records"]
    ]
    seeds = sorted(
        {r["seed"] for r in records if r["method"].endswith(names[0])}
        & {r["seed"] for r in records if r["method"].endswith(names[1])}
    )
    ks = sorted({r["n_context"] for r in records})
    records = [r for r in records if r["seed"] in seeds]
    print(f"prior mean {names[0]!r} against {names[1]!r}: seeds {seeds}")
    for run, name in zip(runs, names, strict=True):  # what "auto" chose per seed, on the training people
        chosen = run["meta"].get("chosen", {})
        cv = {s: chosen.get(str(s), {}).get("prior_cv") for s in seeds}
        if any(cv.values()):
            print(f"{name}: prior mean chosen per seed (CV over training people: shrunk - reward, se)")
            for s in seeds:
                c = cv[s]
                if c:
                    print(f"  s{s}: {c['chosen']} ({c['diff']:+.4f}, se {c['se']:.4f})")
    for k in ks:
        print(f"\n{k} context items: pairwise accuracy per seed")
        print("method | " + " | ".join(f"s{s}" for s in seeds) + " | mean")
        for m in args.methods.split(","):
            for name in names:
                vals = {
                    r["seed"]: r["pairwise"] for r in records if r["method"] == f"{m}/{name}" and r["n_context"] == k
                }
                if vals:
                    cells = " | ".join(f"{vals[s]:.4f}" for s in seeds)
                    print(f"{m}/{name} | {cells} | {sum(vals.values()) / len(vals):.4f}")
        for m in args.methods.split(","):
            d = margin(records, k, method=f"{m}/{names[1]}", over=f"{m}/{names[0]}")
            per = " ".join(f"{v:+.4f}" for v in d["per_seed"])
            lo, hi = d["seed_ci95"]
            blo, bhi = d["bootstrap_ci95"]
            print(
                f"{m}: {names[1]} - {names[0]} = {d['mean']:+.4f} (95% t over seeds [{lo:+.4f}, {hi:+.4f}]; "
                f"bootstrap over {d['people']} people [{blo:+.4f}, {bhi:+.4f}]); per seed {per}"
            )


if __name__ == "__main__":
    main()
