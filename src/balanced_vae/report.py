"""A run report: one self-contained HTML file that a person opens in a browser (beyond the paper).

:func:`build_report` (``balanced-vae report RUN``) gathers what a run folder holds and what
its model can draw into ``RUN/report.html``:

* the config and protocol (``config.json``, stop reasons and sigma*^2 from ``final.json``);
* learning curves with sigma^2 per epoch (``metrics.jsonl``);
* test images, reconstructions and the per-pixel sigma maps (Figure 3);
* prior and GMM samples side by side (Figure 2) and the sigma of the GMM samples (Figure 4);
* a metrics table of every evaluation record in the run folder (``results*.json``,
  ``eval/*.json``) and of the test numbers in ``final.json``;
* for 2-D latents, the log-densities of prior, aggregate posterior and GMM.

Every figure is a matplotlib PNG embedded as a base64 data URI; there is no script, no
style sheet and no font from elsewhere, so the file renders offline and can be mailed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .atomic import write_text_atomic
from .checkpoint import CHECKPOINT, FINAL, METRICS, RESUMES, STAGE1
from .latent_density import latent_plot_for_run
from .latent_samples import decode_samples
from .likelihoods import PixelVariance
from .plots import plot_curves, read_metrics, save_rows, save_side_by_side, save_value_grid
from .provenance import provenance
from .runs import load_run, make_sampler
from .samplers import PriorSampler
from .table_run import is_table_run, plot_reconstructions, plot_sample_moments
from .table_run import scaling as table_scaling

log = logging.getLogger(__name__)

REPORT = "report.html"
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
td.num{text-align:right;font-family:monospace}img{max-width:100%;height:auto;display:block;margin:.5em 0}
.note{color:#555;font-size:.9em}"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: Iterable[Iterable[Any]], header: Iterable[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f'<td class="num">{v:.6g}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="num">{v}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves of a nested ``values`` dict as (path, value); {"mean", "sem"} becomes 'mean +- sem'."""
    if isinstance(values, dict):
        if "mean" in values and isinstance(values["mean"], (int, float)):
            sem = values.get("sem") if values.get("sem") is not None else values.get("std")
            return [(prefix, f"{values['mean']:.6g}" + (f" ± {sem:.2g}" if sem is not None else ""))]
        out = []
        for k, v in values.items():
            if k in ("seconds", "estimates", "bins"):
                continue
            out += _flatten(v, f"{prefix}/{k}" if prefix else str(k))
        return out
    if isinstance(values, (int, float, str, bool)) or values is None:
        return [(prefix, values)]
    return []


def _record_rows(doc: dict, label: str) -> list[tuple[str, str, str, Any]]:
    """Rows of one record: an ``evaluate`` result ({"metrics": ...}) or an ``ood`` result ({"models": ...})."""
    rows = []
    for name, entry in (doc.get("metrics") or {}).items():
        for key, value in _flatten(entry.get("values", {})):
            rows.append((label, name, key, value))
    for model, entry in (doc.get("models") or {}).items():
        for score, m in (entry.get("metrics") or {}).items():
            rows.append(
                (
                    label,
                    f"ood {doc.get('in')} vs {doc.get('out')}",
                    f"{model}/{score}",
                    f"AUROC {m['auroc']:.3f}, AUPRC {m['auprc']:.3f}, FPR@95%TPR {m['fpr_at_95_tpr']:.3f}",
                )
            )
    return rows


def metrics_rows(run_dir: Path, records: Iterable[str | Path] = ()) -> list[tuple[str, str, str, Any]]:
    """(file, metric, quantity, value) for every evaluation record in a run folder, its final.json and
    the extra ``records`` (``evaluate --out`` or ``ood`` JSON files kept elsewhere)."""
    rows: list[tuple[str, str, str, Any]] = []
    files = sorted(run_dir.glob("results*.json")) + sorted((run_dir / "eval").glob("*.json"))
    for f in files + [Path(r) for r in records]:
        try:
            doc = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError) as e:
            log.warning("%s: skipped in the report (%s)", f, e)
            continue
        label = str(f.relative_to(run_dir)) if f in files else str(f)
        rows += _record_rows(doc, label)
    final = run_dir / FINAL
    if final.is_file():
        for key, value in _flatten(json.loads(final.read_text()).get("test", {})):
            rows.append(("final.json", "test (end of training)", key, value))
    return rows


def _figures(run, stage1, data, tmp: Path, *, n: int, seed: int, components: int | None) -> list[tuple[str, str, str]]:
    """(section title, caption, PNG path) for every figure of the report."""
    figs = []
    metrics_file = run.path / METRICS
    if metrics_file.is_file() and metrics_file.stat().st_size:
        figs.append(
            (
                "Learning curves",
                "Train and validation ELBO per epoch (stages separated by a grey line) and "
                "the decoder variance sigma^2: the global sigma^2 in stage 1 and the floor sigma*^2 under the "
                "per-pixel head in stage 2 (the mean predicted per-pixel sigma^2 is not recorded per epoch; "
                "its map is under Reconstructions).",
                plot_curves(read_metrics(metrics_file), tmp / "curves.png"),
            )
        )
    if is_table_run(run):
        return figs + _table_figures(run, data, tmp, n=n, seed=seed, components=components)
    x = data.x_test[:n]
    rows, cmaps = [("data", x)], [None]
    if stage1 is not None:
        m1, _ = stage1.model.reconstruct(x)
        rows.append(("stage 1 mean", m1))
        cmaps.append(None)
    mean, sigma = run.model.reconstruct(x)  # (n, C, H, W)
    rows += [(f"stage {run.stage} mean", mean), ("sigma", sigma), ("|error|", (x - mean).abs())]
    cmaps += [None, "viridis", "viridis"]
    per_pixel = isinstance(run.model.likelihood, PixelVariance)
    kind = "per-pixel sigma (Eq. 11)" if per_pixel else f"global sigma^2 = {run.model.likelihood.sigma2:.4g} (Eq. 9)"
    figs.append(
        (
            "Reconstructions and uncertainty",
            f"First {n} test images, reconstructions g(mu(x)) and the "
            f"decoder's {kind}, beside the absolute error it should describe.",
            save_rows(rows, tmp / "recon.png", cmaps=cmaps),
        )
    )
    gmm = make_sampler("gmm", run, components=components, data=data)
    z_prior = PriorSampler(run.model.latent_dim).sample(64, generator=torch.Generator().manual_seed(seed))
    z_gmm = gmm.sample(64, generator=torch.Generator().manual_seed(seed))  # (64, L)
    x_prior, _ = decode_samples(run.model, z_prior)
    x_gmm, s_gmm = decode_samples(run.model, z_gmm)
    figs.append(
        (
            "Samples: prior vs GMM",
            f"64 decoded samples g(z) from the prior N(0, I) and from the GMM "
            f"(Eq. 13, K = {gmm.n_components}, fitted on the posterior means of the training images), seed "
            f"{seed}.",
            save_side_by_side(
                [("prior N(0, I)", x_prior), (f"GMM K={gmm.n_components}", x_gmm)], tmp / "samples.png", nrow=8
            ),
        )
    )
    if per_pixel:
        figs.append(
            (
                "Samples: prior vs GMM",
                "Per-pixel sigma of the GMM samples above (Figure 4).",
                save_value_grid(s_gmm, tmp / "samples_sigma.png", nrow=8, label="decoder sigma"),
            )
        )
    return figs + _latent_figures(run, data, tmp, components=components)


def _latent_figures(run, data, tmp: Path, *, components: int | None) -> list[tuple[str, str, str]]:
    """For 2-D latents, the figure of the latent space: log-densities of p(z) = N(0, I), q_agg (Eq. 12)
    and q_GMM (Eq. 13) on one grid; none for other latent sizes."""
    if run.model.latent_dim != 2:
        return []
    return [
        (
            "Latent space (2-D)",
            "Log-densities of the prior, the exact aggregate posterior (Eq. 12) and "
            "its GMM (Eq. 13) on one grid and colour scale.",
            latent_plot_for_run(run, tmp / "latent.png", components=components, data=data),
        )
    ]


def _table_figures(run, data, tmp: Path, *, n: int, seed: int, components: int | None) -> list[tuple[str, str, str]]:
    """The figures of a run on a table: rows with their reconstructions and sigma, and the moments of
    GMM and prior draws beside the test rows' (:mod:`balanced_vae.table_run`)."""
    _, columns = table_scaling(run)
    x = data.x_test[: min(n, 6)]
    mean, sigma = run.model.reconstruct(x)  # (n, D, 1, 1)
    figs = [
        (
            "Reconstructions and uncertainty",
            f"First {len(x)} test rows (dots), reconstructions g(mu(x)) and "
            "+-2 decoder sigma per feature, standardised units.",
            plot_reconstructions(x, mean, sigma, tmp / "recon.png", columns),
        )
    ]
    gmm = make_sampler("gmm", run, components=components, data=data)
    g = torch.Generator().manual_seed(seed)
    draws = {}
    for name, z in (
        ("prior N(0, I)", PriorSampler(run.model.latent_dim).sample(1000, generator=g)),
        (f"GMM K={gmm.n_components}", gmm.sample(1000, generator=g)),
    ):
        m, s = decode_samples(run.model, z)
        draws[name] = m + s * torch.randn(m.shape, generator=g)
    figs.append(
        (
            "Samples: prior vs GMM",
            f"Per-feature mean +- one standard deviation of the test rows and of 1,000 "
            f"draws g(z) + sigma eps from the prior and from the GMM (Eq. 13), seed {seed}.",
            plot_sample_moments(data.x_test, draws, tmp / "samples.png", columns),
        )
    )
    return figs + _latent_figures(run, data, tmp, components=components)


def _unfinished(run, final: dict) -> list[str]:
    """A notice for the top of the report of a run that has not finished (interrupted, or still training)."""
    if run.checkpoint.get("done") and final:
        return []
    state = f"stage {run.stage}, epoch {run.checkpoint.get('epoch')}" + ("" if final else "; no final.json")
    return [
        f'<p class="note" style="border:2px solid #c00;padding:.5em;color:#900"><b>Unfinished run</b> '
        f"({html.escape(state)}): training was interrupted or is still going on, so every figure and number below "
        "is of the last checkpoint, not of a trained model. Finish it with <code>balanced-vae train --resume "
        f"{html.escape(str(run.path))}</code>.</p>"
    ]


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    n: int = 12,
    seed: int = 0,
    components: int | None = None,
    data=None,
    data_dir: str | Path | None = None,
    records: Iterable[str | Path] = (),
) -> Path:
    """Write the self-contained HTML report of the run in ``run_dir`` to ``out`` (default ``RUN/report.html``).

    ``n`` test images are reconstructed; 64 prior and 64 GMM samples (K = ``components``,
    default the paper's K for the image shape) are drawn with generators seeded ``seed``.
    ``data`` (a :class:`~balanced_vae.data.Dataset`) skips loading. ``records`` are further JSON
    results for the metrics table (``evaluate --out FILE``, ``ood``). Returns the path.
    """
    records = [Path(r).expanduser() for r in records]
    for r in records:
        if not Path(r).is_file():
            raise FileNotFoundError(
                f"{r}: no such record; pass JSON files written by `balanced-vae evaluate --out` or `balanced-vae ood`"
            )
    run = load_run(run_dir, which=CHECKPOINT)
    stage1 = load_run(run_dir, which=STAGE1) if run.stage == 2 and (run.path / STAGE1).is_file() else None
    c = run.config
    data = run.dataset(data, data_dir=data_dir)
    if not 1 <= n <= len(data.x_test):
        raise ValueError(
            f"n={n}: the test split of {c.dataset} has {len(data.x_test)} images; choose 1 <= n <= {len(data.x_test)}"
        )
    final = json.loads((run.path / FINAL).read_text()) if (run.path / FINAL).is_file() else {}
    prov = provenance(run.path / run.which)
    config = dataclasses.asdict(run.config)  # config.json with the changes of each resume (resumes.jsonl)
    protocol = [
        ("run folder", str(run.path)),
        (
            "data set",
            f"{c.dataset}: {len(data.x_train)} training, {len(data.x_test)} test images of shape {tuple(data.shape)}",
        ),
        (
            "checkpoint",
            f"{run.which} (stage {run.stage}, epoch {run.checkpoint.get('epoch')}), "
            f"sha256 {prov['checkpoint_sha256'][:16]}",
        ),
        ("decoder variance", json.dumps(run.model.likelihood.describe())),
        ("sigma*^2 (Eq. 10, end of stage 1)", final.get("sigma2_star", run.checkpoint.get("sigma2_star"))),
        (
            "report drawn with",
            f"seed {seed}, {n} test images, 64 samples per sampler; balanced-vae "
            f"{prov['version']}, commit {prov['git_commit'][:12]}, torch {prov['torch']}",
        ),
    ]
    if (run.path / RESUMES).is_file():
        protocol += [("resumed", ln) for ln in (run.path / RESUMES).read_text().splitlines() if ln.strip()]
    protocol += [
        (f"stage {s} stop", f"{v.get('reason')} after {v.get('epochs')} epochs, {v.get('seconds')} s")
        for s, v in sorted((final.get("stops") or {}).items())
    ]
    parts = [
        f"<h1>balanced-vae run report: {html.escape(c.dataset)}, method {html.escape(c.method)}</h1>",
        *_unfinished(run, final),
        f'<p class="note">Generated by <code>balanced-vae report {html.escape(str(run.path))}</code>. '
        "Self-contained: every figure is embedded; nothing is fetched.</p>",
        "<h2>Protocol</h2>",
        _table(protocol, ["", ""]),
        "<h2>Config</h2>",
        _table(sorted(config.items()), ["key", "value"]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        section = None
        for title, caption, path in _figures(run, stage1, data, Path(tmp), n=n, seed=seed, components=components):
            if title != section:
                parts.append(f"<h2>{html.escape(title)}</h2>")
                section = title
            parts += [f'<p class="note">{html.escape(caption)}</p>', _img(path, caption)]
    rows = metrics_rows(run.path, records)
    parts += [
        "<h2>Metrics</h2>",
        _table(rows, ["file", "metric", "quantity", "value"])
        if rows
        else '<p class="note">No evaluation records yet: run <code>balanced-vae evaluate RUN</code>.</p>',
    ]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,">'
        f"<title>balanced-vae report: {html.escape(str(run.path.name))}</title><style>{_STYLE}</style></head>"
        "<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    out = Path(out).expanduser() if out is not None else run.path / REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, doc)
    log.info("report written to %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
