"""Training-step levers on this CPU, side by side in one process (issue 13): images/s of our
objective + Adam on the default MNIST network for fp32, bf16 autocast, fused Adam and
channels_last, median of 3 interleaved rounds of 30 steps, and the ratio to fp32.

    OMP_NUM_THREADS=2 python bench/train_levers.py > bench/results/train_levers.json
"""
import os
import time, torch
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.methods import build_model, build_objective
data = load_dataset("mnist", data_dir=os.environ.get("BALANCED_VAE_DATA", "../shared/data"))
x = data.x_train[:128 * 30]
cfg = TrainConfig(dataset="mnist", method="fixed", sigma2=1.0, latent_dim=16, width=32).resolved((1, 28, 28))
obj = build_objective(cfg)
def run(precision="fp32", fused=False, cl=False, steps=30):
    torch.manual_seed(0)
    m = build_model(cfg, (1, 28, 28))
    if cl: m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused) if fused else torch.optim.Adam(m.parameters(), lr=1e-3)
    t = time.perf_counter()
    for b in range(steps):
        xb = x[b * 128:(b + 1) * 128]
        if cl: xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = obj(m, xb)["loss"]
        opt.zero_grad(); loss.backward(); opt.step()
    return steps * 128 / (time.perf_counter() - t)
res = {k: [] for k in ("fp32", "bf16", "fused_adam", "channels_last")}
for r in range(3):
    res["fp32"].append(run())
    res["bf16"].append(run("bf16"))
    res["fused_adam"].append(run(fused=True))
    res["channels_last"].append(run(cl=True))
import json
med = {k: sorted(v)[1] for k, v in res.items()}
print(json.dumps({"bench": "train_levers", "images_per_s": med,
                  "ratio_vs_fp32": {k: v / med["fp32"] for k, v in med.items()},
                  "threads": torch.get_num_threads(), "torch": torch.__version__}, indent=1))
