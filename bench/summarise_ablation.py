"""Table of the ablation records (bench/ablation.sh): FID of ours against width, stopping and learning rate.

python bench/summarise_ablation.py results/gpu-ablation      -> prints Markdown, writes SUMMARY.md there
"""

import json
import sys
from pathlib import Path

from balanced_vae.provenance import short_commit

folder = Path(sys.argv[1])
lines = [
    "| run | device | precision | width | blocks | tol | lr drops | stage 1 | stage 2 | sigma*^2 | test ELBO "
    "| FID GMM K=32 | FID prior | commit |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for run in sorted(p for p in folder.iterdir() if (p / "final.json").is_file()):
    cfg = json.loads((run / "config.json").read_text())
    final = json.loads((run / "final.json").read_text())
    fid = {
        s: json.loads(f.read_text())["metrics"]["fid"]
        for s in ("gmm", "prior")
        if (f := run / f"eval-fid-{s}.json").is_file()
    }
    stops = final["stops"]
    stage = lambda k: f"{stops[k]['reason']} @ {stops[k]['epochs']} ep" if k in stops else "-"  # noqa: E731
    f = lambda s: f"{fid[s]['values']['fid']:.2f}" if s in fid else "-"  # noqa: E731
    commit = next((short_commit(fid[s]["provenance"]) for s in fid), "-")
    lines.append(
        f"| {run.name} | {final.get('device', '-')} | {cfg.get('precision', 'fp32')} | {cfg['width']} "
        f"| {cfg.get('blocks', 0)} | {cfg['tol']:g} | {cfg.get('lr_drops', 0)} | {stage('1')} | {stage('2')} "
        f"| {final['sigma2_star']:.4g} | {final['test']['elbo']:.1f} | {f('gmm')} | {f('prior')} "
        f"| `{commit}` |"
    )
text = (
    "# Ablation of ours at the paper's FID protocol (10,000 vs 10,000 test images)\n\n"
    "Written by `python bench/summarise_ablation.py` from the records of `bench/ablation.sh`.\n\n"
    + "\n".join(lines)
    + "\n\n"
    "`+dirty`: the tree the run was computed from had uncommitted changes to tracked files (records written\n"
    "before provenance listed which files; see `git_dirty_files` in newer records).\n"
)
(folder / "SUMMARY.md").write_text(text)
print(text)
