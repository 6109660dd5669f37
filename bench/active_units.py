"""Active latent dimensions of trained runs: Var_x E[z|x] and the KL per dimension on test images.

    python bench/active_units.py results/mnist-paper/model results/fashion-mnist-paper/model

Prints JSON per run. A dimension is active when Var_x E[z|x] > 0.01 (Burda et al. 2016); a collapsed
posterior has none (see `stops.N.posterior_collapse` in final.json).
"""

import json
import sys

from balanced_vae.data import load_dataset
from balanced_vae.data.splits import test_images
from balanced_vae.model import encode_dataset
from balanced_vae.objectives import kl_standard_normal
from balanced_vae.runs import load_run

N = 5000
for path in sys.argv[1:]:
    run = load_run(path)
    x = test_images(load_dataset(run.config.dataset, data_dir=run.config.data_dir), run.config)[:N]
    mu, logvar = encode_dataset(run.model, x.float())  # (N, L) each, eval mode
    var_mu = mu.var(0)
    kl = kl_standard_normal(mu.T[..., None], logvar.T[..., None]).mean(1)  # (L,): per dimension, mean over x
    print(
        json.dumps(
            {
                "run": path,
                "n_test": len(x),
                "active": int((var_mu > 0.01).sum()),
                "latent_dim": mu.shape[1],
                "var_mu": [round(v, 3) for v in var_mu.tolist()],
                "kl_per_dim": [round(v, 2) for v in kl.tolist()],
            }
        )
    )
