"""Anomaly detection on real tables shipped with scikit-learn: BalancedVAE beside the usual baselines.

    OMP_NUM_THREADS=1 python bench/anomaly.py --seeds 5 --out bench/results/anomaly.json

Protocol (every number in the JSON; nothing is downloaded):

* ``breast_cancer`` (``load_breast_cancer``, 569 x 30): the normal class is benign (357 rows),
  the anomalies malignant (212). Per seed, 70 % of the benign rows train every detector; the
  other 30 % of the benign rows and all malignant rows are scored.
* ``digits`` (``load_digits`` as 64-d vectors, 1,797 x 64): one digit class is held out as the
  anomaly (``--digits-outlier``, default 0); 70 % of the other nine classes train, the rest of
  them and every image of the held-out class are scored.
* Detectors, each seeded with the seed: ``BalancedVAE`` with the per-feature variance of
  Algorithm 1 (``stages=2``) and with the global sigma^2 only (``stages=1``), a fixed-variance
  VAE (``sigma2=0.5``: sigma^2 held at 0.5 in standardised units, same networks, loop and IWAE),
  ``IsolationForest`` (defaults), ``LocalOutlierFactor(novelty=True)`` (defaults) and
  ``GaussianMixture`` (full covariances, K picked by BIC on the training rows from 1, 2, 4, 8).
  The baselines see the training rows standardised by ``StandardScaler``; BalancedVAE
  standardises by itself. The anomaly score is -log p(x) (IWAE, k = 50, for the VAEs;
  ``score_samples`` of the GMM) or minus ``score_samples`` (IsolationForest, LOF).
* Metrics (:func:`balanced_vae.ood.ood_metrics`, anomalies positive): AUROC, AUPRC, FPR at 95 % TPR;
  mean and standard deviation over the seeds 0..N-1.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler

from balanced_vae import BalancedVAE
from balanced_vae.atomic import write_json_atomic
from balanced_vae.ood import ood_metrics
from balanced_vae.provenance import provenance

METRICS = ("auroc", "auprc", "fpr_at_95_tpr")
VAE_ARGS = dict(epochs=300, latent_dim=8, k=50)


def datasets(digits_outlier: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (normal rows, anomalous rows)."""
    bc = load_breast_cancer()
    dg = load_digits()
    return {
        "breast_cancer": (bc.data[bc.target == 1], bc.data[bc.target == 0]),
        "digits": (dg.data[dg.target != digits_outlier], dg.data[dg.target == digits_outlier]),
    }


def _gmm(x: np.ndarray, seed: int) -> GaussianMixture:
    fits = [GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=seed).fit(x) for k in (1, 2, 4, 8)]
    return min(fits, key=lambda g: g.bic(x))


def detectors(seed: int) -> dict:
    """name -> f(train rows, test rows) -> anomaly scores of the test rows (higher = more anomalous)."""

    def vae(**kw):
        return lambda tr, te: -BalancedVAE(random_state=seed, **VAE_ARGS, **kw).fit(tr).score_samples(te)

    def scaled(make):
        def f(tr, te):
            sc = StandardScaler().fit(tr)
            return make(sc.transform(tr), sc.transform(te))

        return f

    return {
        "BalancedVAE (per-feature sigma^2, Alg. 1)": vae(stages=2),
        "BalancedVAE (global sigma^2, stage 1)": vae(stages=1),
        "fixed-variance VAE (sigma^2 = 0.5)": vae(sigma2=0.5),
        "IsolationForest": scaled(lambda tr, te: -IsolationForest(random_state=seed).fit(tr).score_samples(te)),
        "LocalOutlierFactor (novelty)": scaled(
            lambda tr, te: -LocalOutlierFactor(novelty=True).fit(tr).score_samples(te)
        ),
        "GaussianMixture (BIC K)": scaled(lambda tr, te: -_gmm(tr, seed).score_samples(te)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--digits-outlier", type=int, default=0)
    p.add_argument("--out", default="bench/results/anomaly.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prov = provenance()  # the code as it was when the run started
    runs: dict = {}
    for name, (normal, anomalous) in datasets(args.digits_outlier).items():
        for seed in range(args.seeds):
            perm = np.random.default_rng(seed).permutation(len(normal))
            n_train = int(0.7 * len(normal))
            train, held = normal[perm[:n_train]], normal[perm[n_train:]]
            test = np.concatenate([held, anomalous])
            for det, f in detectors(seed).items():
                t0 = time.perf_counter()
                s = f(train, test)
                m = ood_metrics(s[: len(held)], s[len(held) :])
                row = runs.setdefault(name, {}).setdefault(det, {k: [] for k in (*METRICS, "seconds")})
                for k in METRICS:
                    row[k].append(m[k])
                row["seconds"].append(round(time.perf_counter() - t0, 2))
                print(f"{name} seed {seed} {det}: " + ", ".join(f"{k} {m[k]:.3f}" for k in METRICS), flush=True)
    summary = {
        name: {
            det: {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in row.items()}
            for det, row in dets.items()
        }
        for name, dets in runs.items()
    }
    doc = {
        "command": f"python bench/anomaly.py --seeds {args.seeds} --digits-outlier {args.digits_outlier}",
        "protocol": __doc__.split("Protocol")[1].strip(),
        "vae_args": VAE_ARGS,
        "n": {
            name: {
                "train_normal": int(0.7 * len(nm)),
                "test_normal": len(nm) - int(0.7 * len(nm)),
                "test_anomalous": len(an),
            }
            for name, (nm, an) in datasets(args.digits_outlier).items()
        },
        "summary": summary,
        "per_seed": runs,
        "provenance": prov,
    }
    write_json_atomic(Path(args.out), doc)
    print(markdown(doc))


def markdown(doc: dict) -> str:
    """The README table: mean +- std over the seeds, per data set and detector."""
    lines = []
    for name, dets in doc["summary"].items():
        n = doc["n"][name]
        lines += [
            f"\n{name} (train {n['train_normal']} normal rows; test {n['test_normal']} normal + "
            f"{n['test_anomalous']} anomalous)\n",
            "| detector | AUROC | AUPRC | FPR@95%TPR | seconds |",
            "|---|---|---|---|---|",
        ]
        for det, m in dets.items():
            lines.append(
                f"| {det} | "
                + " | ".join(f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" for k in METRICS)
                + f" | {m['seconds']['mean']:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
