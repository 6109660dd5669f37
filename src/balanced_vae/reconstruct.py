"""Figure 3 of the paper: test images, their reconstructions g(mu(x)) and the predicted sigma (Section 5)."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CHECKPOINT
from .plots import save_rows
from .runs import load_run

__all__ = ["reconstruct_run"]


def reconstruct_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    n: int = 16,
    which: str = CHECKPOINT,
    split: str = "test",
    data=None,
    data_dir: str | Path | None = None,
    error: bool = False,
) -> Path:
    """Figure 3: rows of ground truth, reconstruction g(mu(x)) and predicted per-pixel sigma.

    The first ``n`` images of ``split`` are encoded to their posterior means and decoded.
    With ``error`` a fourth row shows |x - g(mu(x))| with its own colour bar, to set
    beside sigma. Writes ``OUT/reconstructions.png`` and returns it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; choose 'train' or 'test'")
    run = load_run(run_dir, which=which)
    c = run.config
    data = run.dataset(data, data_dir=data_dir)
    x_all = data.x_train if split == "train" else data.x_test
    if not 1 <= n <= len(x_all):
        raise ValueError(f"--n {n}: the {split} split has {len(x_all)} images; choose 1 <= n <= {len(x_all)}")
    x = x_all[:n]
    mean, sigma = run.model.reconstruct(x)  # (n, C, H, W) each
    rows = [("data", x), ("reconstruction", mean), ("sigma", sigma)]
    cmaps = [None, None, "viridis"]
    if error:
        rows.append(("|error|", (x - mean).abs()))
        cmaps.append("viridis")
    kind = "per-pixel sigma (Eq. 11)" if run.stage == 2 else f"global sigma^2 = {run.model.likelihood.sigma2:.4g}"
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_rows(
        rows, out_dir / "reconstructions.png", cmaps=cmaps, title=f"{c.dataset} {split}: reconstructions and {kind}"
    )
