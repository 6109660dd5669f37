"""Anomaly detection on a table with BalancedVAE, the scikit-learn estimator (docs/API.md).

A notebook-style walk through the estimator on scikit-learn's breast cancer table (569 x 30,
shipped with scikit-learn, nothing downloaded): train on benign tumours, score held-out benign
and malignant ones by log p(x), and look at what the learned per-feature variance says.

    python examples/anomaly_detection.py                 # about half a minute on 2 CPU cores
    python examples/anomaly_detection.py --epochs 5      # a quick run (CI)

The protocol of the table in the README (5 seeds, baselines, a second data set) is
``bench/anomaly.py``; this script is one seed of it, read step by step.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from balanced_vae import BalancedVAE
from balanced_vae.ood import ood_metrics

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--epochs", type=int, default=300, help="maximum epochs per stage (a stage stops at convergence)")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

# %% 1. Data: benign rows are "normal"; 70 % of them train, the rest and every malignant row are scored.
bunch = load_breast_cancer()
benign, malignant = bunch.data[bunch.target == 1], bunch.data[bunch.target == 0]
perm = np.random.default_rng(args.seed).permutation(len(benign))
n_train = int(0.7 * len(benign))
x_train, x_benign = benign[perm[:n_train]], benign[perm[n_train:]]

# %% 2. Fit: Algorithm 1 on the standardised features (global sigma^2, then a per-feature head),
#       then the Gaussian mixture of the aggregate posterior. Raw units go in; the estimator scales.
model = BalancedVAE(latent_dim=8, epochs=args.epochs, random_state=args.seed).fit(x_train)
print(
    f"sigma*^2 (stage 1, standardised units): {model.sigma2_:.3f}; stages ended by "
    + ", ".join(f"{s}: {v['reason']} after {v['epochs']} epochs" for s, v in model.stops_.items())
)

# %% 3. Score: log p(x) in the original units (IWAE, k = 50); an anomaly has a low log p(x).
log_p_benign, log_p_malignant = model.score_samples(x_benign), model.score_samples(malignant)
ours = ood_metrics(-log_p_benign, -log_p_malignant)
iforest = make_pipeline(StandardScaler(), IsolationForest(random_state=args.seed)).fit(x_train)
theirs = ood_metrics(-iforest.score_samples(x_benign), -iforest.score_samples(malignant))
print(f"mean log p(x): held-out benign {log_p_benign.mean():.1f}, malignant {log_p_malignant.mean():.1f} nats")

# %% 4. Which features does the model find uncertain? The per-feature sigma of the reconstruction
#       (Eq. 11), relative to each feature's spread: large where benign tumours vary most.
rel = model.predict_uncertainty(x_benign).mean(0) / model.scale_
order = np.argsort(rel)[::-1]
print("least certain features (sigma / std):", ", ".join(f"{bunch.feature_names[j]} {rel[j]:.2f}" for j in order[:3]))
print("most certain features (sigma / std):", ", ".join(f"{bunch.feature_names[j]} {rel[j]:.2f}" for j in order[-3:]))

# %% 5. Generate: rows drawn from the GMM of the codes with per-feature noise, in the original units.
fake = model.sample(1000, random_state=args.seed)
print(f"mean radius of data vs samples: {x_train[:, 0].mean():.2f} vs {fake[:, 0].mean():.2f}")

print(
    json.dumps(
        {
            "BalancedVAE": {k: round(ours[k], 3) for k in ("auroc", "auprc", "fpr_at_95_tpr")},
            "IsolationForest": {k: round(theirs[k], 3) for k in ("auroc", "auprc", "fpr_at_95_tpr")},
        },
        indent=2,
    )
)
