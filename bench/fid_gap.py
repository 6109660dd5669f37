"""Where ours loses FID: the decoder, or the fit of q(z) it samples from (issue 16).

For each trained run, FID of the decoder means g(z) on 10,000 generated vs the 10,000 test
images (the paper's protocol) under four choices of p(z):

    prior        N(0, I)
    gmm-mean     GMM, K components, fitted on the posterior means of the training images (the paper's)
    gmm-sample   GMM, K components, fitted on one z ~ q(z|x) per training image
    aggregate    the exact aggregate posterior q(z) = 1/N sum_n q(z|x_n) over the training images
    means        the posterior means of randomly drawn training images (the empirical distribution
                 of the codes the GMM on means is fitted to): reconstructions of training images

The aggregate row is the distribution every GMM fit approximates (Eq. 12); the means row is the
distribution the paper's GMM is fitted to, so its FID is what the decoder reaches on codes it was
trained to reconstruct: the gap between a GMM row and it is what the fit of q(z) loses, and the gap
between it and the paper's number is what this decoder loses. Rows whose record exists are reused (the run is resumable); the prior
and gmm-mean rows are read from RUN/eval/ where ``reproduce`` already computed them for the same
weights at the same n.

    OMP_NUM_THREADS=2 python bench/fid_gap.py results/mnist-paper-gpu/model --out results/fid-gap
    -> OUT/<dataset>-<budget>-<run>/<variant>.json, OUT/SUMMARY.md, OUT/summary.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from balanced_vae.checkpoint import CHECKPOINT, file_digest
from balanced_vae.evaluate import evaluate_run, fid_between
from balanced_vae.model import encode_dataset, eval_mode
from balanced_vae.provenance import short_commit
from balanced_vae.runs import load_run, model_sha256

VARIANTS = {
    "prior": ("prior", None),
    "gmm-mean": ("gmm", "mean"),
    "gmm-sample": ("gmm", "sample"),
    "aggregate": ("aggregate", None),
    "means": (None, None),
}


def fid_of_means(run_path: Path, target: Path, *, n: int, seed: int = 0, cache_dir=None, backend="auto") -> None:
    """FID of the decoder means g(mu(x_i)) of ``n`` training images drawn with replacement (seeded)."""
    run = load_run(run_path)
    mu, _ = encode_dataset(run.model, run.images("train"))
    idx = torch.randint(len(mu), (n,), generator=torch.Generator().manual_seed(seed))
    with eval_mode(run.model), torch.no_grad():
        x = torch.cat([run.model.decode_mean(mu[idx[i : i + 1000]]) for i in range(0, n, 1000)])
    images = target.with_suffix(".npy")
    np.save(images, x.clamp(0, 1).numpy())
    doc = fid_between(images, f"{run.config.dataset}:test", n=n, cache_dir=cache_dir, backend=backend)
    images.unlink()
    doc["provenance"].update(
        checkpoint=CHECKPOINT,
        checkpoint_sha256=file_digest(run_path / CHECKPOINT),
        model_sha256=model_sha256(run.model),
    )
    record = {
        "run": str(run_path),
        "metrics": {
            "fid": {
                "values": {"fid": doc["fid"]},
                "provenance": doc["provenance"],
                "seconds": doc["seconds"],
                "protocol": {
                    "generated": {
                        "images": "decoder means g(mu(x)) of training images drawn uniformly with replacement",
                        "n": n,
                        "seed": seed,
                    },
                    "real": doc["b"],
                    "backend": doc["backend"],
                    "inception": doc["inception"],
                },
            }
        },
    }
    target.write_text(json.dumps(record, indent=1) + "\n")


def label(run: Path) -> str:
    """``mnist-paper-gpu-learned`` for ``.../mnist-paper-gpu/runs/learned``."""
    return f"{run.parent.parent.name}-{run.name}" if run.parent.name == "runs" else run.name


def reproduce_record(run: Path, variant: str, k: int, n: int) -> Path | None:
    """The record ``reproduce`` cached for this variant, when it holds these weights' FID at n."""
    name = {"prior": f"fid_prior_n{n}.json", "gmm-mean": f"fid_gmm_K{k}_n{n}.json"}.get(variant)
    path = run / "eval" / name if name else None
    if path is None or not path.is_file():
        return None
    prov = json.loads(path.read_text())["metrics"]["fid"]["provenance"]
    return path if prov.get("checkpoint_sha256") == file_digest(run / CHECKPOINT) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with checkpoint.pt)")
    ap.add_argument("--out", type=Path, default=Path("results/fid-gap"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--components", type=int, default=32)
    ap.add_argument("--n-fid", type=int, default=10_000)
    ap.add_argument("--fid-cache", type=Path, default=None, help="cached real-image statistics (see evaluate)")
    ap.add_argument("--fid-backend", default="auto")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant {bad[0]!r}; choose from {list(VARIANTS)}")
    for run in args.runs:
        if not (run / CHECKPOINT).is_file():
            ap.error(f"{run}: no {CHECKPOINT}; pass a finished run folder")
        folder = args.out / label(run)
        folder.mkdir(parents=True, exist_ok=True)
        for v in variants:
            target = folder / f"{v}.json"
            if target.is_file() or reproduce_record(run, v, args.components, args.n_fid):
                continue
            sampler, fit_on = VARIANTS[v]
            t0 = time.perf_counter()
            if v == "means":
                fid_of_means(run, target, n=args.n_fid, cache_dir=args.fid_cache, backend=args.fid_backend)
            else:
                evaluate_run(
                    run,
                    metrics="fid",
                    sampler=sampler,
                    components=args.components,
                    gmm_fit_on=fit_on,
                    n_fid=args.n_fid,
                    cache_dir=args.fid_cache,
                    fid_backend=args.fid_backend,
                    out=target,
                )
            print(f"{label(run)} {v}: {time.perf_counter() - t0:.0f} s", flush=True)
    summarise(args.out, args.runs, args.components, args.n_fid)
    return 0


def summarise(out: Path, runs: list[Path], k: int, n: int) -> None:
    """One row per run: FID under each p(z), and the commits that computed them; rows of runs
    summarised by earlier calls into the same ``out`` are kept (and refreshed)."""
    old = out / "summary.json"
    earlier = [Path(r["path"]) for r in json.loads(old.read_text())["rows"]] if old.is_file() else []
    runs = list(dict.fromkeys([*earlier, *runs]))
    rows = []
    for run in runs:
        row = {"run": label(run), "path": str(run)}
        commits = []
        for v in VARIANTS:
            path = out / label(run) / f"{v}.json"
            path = path if path.is_file() else reproduce_record(run, v, k, n)
            if path is None:
                continue
            fid = json.loads(path.read_text())["metrics"]["fid"]
            row[v] = round(fid["values"]["fid"], 2)
            row[f"{v}_record"] = str(path)
            commits.append(short_commit(fid["provenance"]) or "unknown")
        row["commit"] = ", ".join(dict.fromkeys(commits))
        rows.append(row)
    (out / "summary.json").write_text(json.dumps({"components": k, "n_fid": n, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# FID of ours under four p(z): {n} generated vs {n} test images, K = {k}",
        "",
        "Written by `python bench/fid_gap.py`; see its docstring for the protocol.",
        "",
        "| run | prior | GMM on means (paper) | GMM on samples | exact aggregate posterior "
        "| training posterior means | commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | " + " | ".join(str(r.get(v, "")) for v in VARIANTS) + f" | `{r['commit']}` |")
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
