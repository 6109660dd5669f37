"""Out-of-distribution detection with the likelihoods of a trained run (beyond the paper).

A VAE trained on one data set scores test images of that set (in-distribution) and of
another (out-of-distribution, OOD); a good score ranks OOD images as more unusual. The
scores, each "higher = more OOD":

* ``elbo`` -- minus the test ELBO (Eq. 9 / Eq. 11), one z ~ q(z|x), closed-form KL;
* ``iwae_prior`` -- minus the IWAE bound on log p(x) with p(z) = N(0, I) (Burda et al. 2016);
* ``iwae_gmm`` -- the same with the GMM of Eq. 13 as p(z) (fitted on one z ~ q(z|x) per
  training image, the density fit of :mod:`balanced_vae.evaluate`);
* ``dequantised`` -- minus the IWAE bound (prior) on uniformly dequantised images, which a
  per-pixel variance cannot inflate on pixels that are exactly 0 or 1;
* ``typicality`` -- |log p(x) - mean log p(x_ref)| with log p the IWAE bound (prior) and
  x_ref held-out in-distribution images (the run's validation split): the per-image
  (M = 1) version of the typicality test of Nalisnick, Matsukawa, Teh and
  Lakshminarayanan (2019), "Detecting Out-of-Distribution Inputs to Deep Generative Models
  Using Typicality". It flags images that are *too likely* as well as too unlikely.

Likelihoods of Gaussian-decoder VAEs are known to rank simpler images as more likely
regardless of the training set (Nalisnick et al. 2019, "Do Deep Generative Models Know
What They Don't Know?"): a model trained on Fashion-MNIST gives MNIST digits a higher
likelihood than its own test images, so likelihood scores have AUROC < 0.5 in that
direction. Both directions are reported, never only the flattering one.

:func:`ood_metrics` (AUROC, AUPRC, FPR at 95 % TPR with OOD as the positive class, by
scikit-learn) and :func:`typicality_score` are pure functions; :func:`log_likelihoods`
scores images with a model; :func:`ood_for_run` is ``balanced-vae ood``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .atomic import write_json_atomic, write_text_atomic
from .checkpoint import CHECKPOINT, STAGE1
from .data import load_dataset
from .data.splits import split_train
from .metrics import dequantised_log_likelihood, elbo, iwae_log_likelihood
from .provenance import provenance
from .runs import fit_gmm_for_run, load_run
from .samplers import DEFAULT_COMPONENTS

log = logging.getLogger(__name__)

SCORES = {
    "elbo": "-ELBO (Eq. 9 / 11), one z ~ q(z|x)",
    "iwae_prior": "-IWAE log p(x), p(z) = N(0, I)",
    "iwae_gmm": "-IWAE log p(x), p(z) = GMM (Eq. 13)",
    "dequantised": "-IWAE log p(x + u), u ~ U(0, 1/256), p(z) = N(0, I)",
    "typicality": "|log p(x) - mean log p(validation)|, IWAE, p(z) = N(0, I)",
}
TPR_LEVEL = 0.95


# --------------------------------------------------------------------------- pure functions


def ood_metrics(score_in, score_out, *, tpr_level: float = TPR_LEVEL) -> dict[str, float]:
    """Detection metrics of scores (higher = more OOD) of in-distribution (N,) and OOD (M,) images.

    The positive class is OOD. Returns ``auroc`` (scikit-learn ``roc_auc_score``; 0.5 is
    chance, below 0.5 the score ranks in-distribution images as *more* unusual),
    ``auprc`` (``average_precision_score``, chance = M / (N + M)), ``fpr_at_95_tpr``
    (fraction of in-distribution images flagged at the lowest threshold that flags
    ``tpr_level`` of the OOD images, from ``roc_curve``), ``mean_in`` and ``mean_out``.
    """
    s_in, s_out = (
        np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64).ravel()
        for s in (score_in, score_out)
    )
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError(f"ood_metrics: {len(s_in)} in-distribution and {len(s_out)} OOD scores; need both non-empty")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("ood_metrics: scores contain NaN or inf; check the model's log-likelihoods")
    y = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])  # (N + M,), 1 = OOD
    s = np.concatenate([s_in, s_out])
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    i = int(np.searchsorted(tpr, tpr_level, side="left"))  # first tpr >= level
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "fpr_at_95_tpr": float(fpr[i]),
        "mean_in": float(s_in.mean()),
        "mean_out": float(s_out.mean()),
    }


def typicality_score(log_p: torch.Tensor, reference_log_p: torch.Tensor) -> torch.Tensor:
    """Per-image typicality score |log p(x) - mean log p(x_ref)|: (N,), (R,) -> (N,).

    The M = 1 case of Nalisnick et al.'s (2019) test |-1/M sum_m log p(x_m) - H|, with the
    entropy H estimated by minus the mean log-likelihood of held-out in-distribution data.
    """
    return (log_p.double() - reference_log_p.double().mean()).abs().float()


# --------------------------------------------------------------------------- model scores


def log_likelihoods(
    model,
    x: torch.Tensor,
    *,
    k: int = 20,
    gmm=None,
    seed: int = 0,
    batch_size: int = 100,
    estimates: Sequence[str] = ("elbo", "iwae_prior", "iwae_gmm", "dequantised"),
) -> dict[str, torch.Tensor]:
    """Per-image log-likelihood estimates of images x (N, C, H, W) under ``model``: name -> (N,) nats.

    ``elbo`` (Eq. 9 / 11), ``iwae_prior`` and ``iwae_gmm`` (IWAE with k samples, p(z) =
    N(0, I) or ``gmm``), ``dequantised`` (IWAE, prior, on x + U(0, 1/256)). Each estimate
    draws its noise from its own generator seeded ``seed``, so every estimate of an image
    set is reproducible on its own. ``iwae_gmm`` is skipped when ``gmm`` is None.
    """
    device = next(model.parameters()).device
    x = x.to(device)
    out: dict[str, torch.Tensor] = {}
    for name in estimates:
        g = torch.Generator(device=device).manual_seed(seed)
        t0 = time.perf_counter()
        if name == "elbo":
            out[name] = torch.cat([elbo(model, x[i : i + 1000], generator=g)["elbo"] for i in range(0, len(x), 1000)])
        elif name == "iwae_prior":
            out[name] = iwae_log_likelihood(model, x, k, generator=g, batch_size=batch_size)
        elif name == "iwae_gmm":
            if gmm is None:
                continue
            out[name] = iwae_log_likelihood(model, x, k, prior=gmm, generator=g, batch_size=batch_size)
        elif name == "dequantised":
            out[name] = dequantised_log_likelihood(model, x, k, generator=g, batch_size=batch_size)["log_likelihood"]
        else:
            raise ValueError(f"unknown log-likelihood {name!r}; choose from elbo, iwae_prior, iwae_gmm, dequantised")
        out[name] = out[name].float().cpu()  # (N,)
        log.info(
            "%s of %d images: mean %.2f nats (%.1fs)", name, len(x), float(out[name].mean()), time.perf_counter() - t0
        )
    return out


def ood_scores(log_p: dict[str, torch.Tensor], reference_log_p: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Scores (higher = more OOD) from :func:`log_likelihoods`: minus each estimate, plus typicality.

    ``typicality`` uses ``log_p["iwae_prior"]`` against ``reference_log_p`` (R,), when given.
    """
    scores = {name: -v for name, v in log_p.items()}
    if reference_log_p is not None:
        scores["typicality"] = typicality_score(log_p["iwae_prior"], reference_log_p)
    return scores


# --------------------------------------------------------------------------- a run


def _model_label(run) -> str:
    return "per-pixel sigma^2 (Eq. 11)" if run.stage == 2 else "global sigma^2 (Eq. 9)"


def _density_gmm(run, components: int, train_data):
    """The GMM of Eq. 13 as a density: fitted on one z ~ q(z|x) per training image (see evaluate);
    cached beside the run for ``checkpoint.pt``, fitted in memory for another checkpoint."""
    return fit_gmm_for_run(run, components, data=train_data, fit_on="sample")


def _load(name: str, cache: dict, data_dir, image_size):
    if name not in cache:
        cache[name] = load_dataset(name, data_dir=data_dir, image_size=image_size)
    return cache[name]


def ood_for_run(
    run_dir: str | Path,
    *,
    out_dataset: str,
    in_dataset: str | None = None,
    checkpoints: Sequence[str] | None = None,
    n: int = 2000,
    n_ref: int = 2000,
    k: int = 20,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """OOD detection of ``out_dataset``'s test images against ``in_dataset``'s (default: the run's data set).

    For each checkpoint in ``checkpoints`` (default: ``stage1.pt`` -- the global sigma^2 --
    when present, and ``checkpoint.pt``), scores the first ``n`` test images of each set
    (:func:`log_likelihoods`, k importance samples, seed ``seed``) and the first ``n_ref``
    validation images of the run's training set (the reference of ``typicality``; the
    first training images when the run held none out), and computes :func:`ood_metrics`
    for every score. Returns a JSON-able document with the protocol and, per model, the
    metrics and the mean log-likelihoods of both sets.
    """
    run_dir = Path(run_dir).expanduser()
    if checkpoints is None:
        checkpoints = ([STAGE1] if (run_dir / STAGE1).is_file() else []) + [CHECKPOINT]
    first = load_run(run_dir, which=checkpoints[0])
    c = first.config
    in_dataset = in_dataset or c.dataset
    shape = tuple(first.checkpoint["shape"])
    data_dir = data_dir or c.data_dir
    cache: dict[str, Any] = {}
    train_data = _load(c.dataset, cache, data_dir, c.image_size)
    sets = {}
    for role, name in (("in", in_dataset), ("out", out_dataset)):
        d = _load(name, cache, data_dir, c.image_size)
        if tuple(d.shape) != shape:
            raise ValueError(
                f"{run_dir}: the run's images are {shape} but {name} has {tuple(d.shape)}; "
                "choose a data set of the run's shape (folder and CelebA images are resized to the run's "
                "image_size)"
            )
        if not 1 <= n <= len(d.x_test):
            raise ValueError(
                f"n={n}: the test split of {name} has {len(d.x_test)} images; choose 1 <= n <= {len(d.x_test)}"
            )
        sets[role] = d.x_test[:n]  # (n, C, H, W)
    _, x_val = split_train(train_data, c)
    reference = "validation split of the run (held out from training)"
    if len(x_val) == 0:
        x_val = train_data.x_train
        reference = "training images (the run held no validation split)"
    x_ref = x_val[:n_ref]  # (R, C, H, W)

    models: dict[str, Any] = {}
    for which in checkpoints:
        t0 = time.perf_counter()
        run = first if which == checkpoints[0] else load_run(run_dir, which=which)
        gmm = _density_gmm(run, components, train_data)
        ll = {role: log_likelihoods(run.model, x, k=k, gmm=gmm, seed=seed) for role, x in sets.items()}
        ref = log_likelihoods(run.model, x_ref, k=k, seed=seed, estimates=("iwae_prior",))["iwae_prior"]
        scores = {role: ood_scores(ll[role], ref) for role in sets}
        label = "per_pixel" if run.stage == 2 else "global"
        label = label if label not in models else f"{label}:{which}"
        models[label] = {
            "checkpoint": which,
            "stage": run.stage,
            "likelihood": _model_label(run),
            "sigma2": run.model.likelihood.sigma2,
            "metrics": {s: ood_metrics(scores["in"][s], scores["out"][s]) for s in scores["in"]},
            "log_likelihood": {role: {s: float(v.double().mean()) for s, v in ll[role].items()} for role in sets},
            "reference_log_likelihood": float(ref.double().mean()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("%s (%s): done in %.0fs", which, label, models[label]["seconds"])
    return {
        "run": str(run_dir),
        "trained_on": c.dataset,
        "in": in_dataset,
        "out": out_dataset,
        "protocol": {
            "n_in": n,
            "n_out": n,
            "images": f"first {n} of each test split",
            "k": k,
            "seed": seed,
            "reference": {"n": len(x_ref), "images": reference},
            "gmm": {"K": components, "fit_on": "sample", "codes": "one z ~ q(z|x) per training image"},
            "positive_class": "out-of-distribution",
            "scores": SCORES,
            "fpr_at_95_tpr": "fraction of in-distribution images flagged at the threshold that "
            "flags 95 % of the OOD images",
            "command": ood_command(run_dir, in_dataset, out_dataset, checkpoints, n, n_ref, k, components, seed),
        },
        "models": models,
        "provenance": provenance(),
    }


def ood_command(run_dir, in_dataset, out_dataset, checkpoints, n, n_ref, k, components, seed) -> str:
    """The ``balanced-vae ood`` command line that reproduces a result."""
    return (
        f"balanced-vae ood {run_dir} --in {in_dataset} --out {out_dataset} --checkpoints {','.join(checkpoints)} "
        f"--n {n} --n-ref {n_ref} --k {k} --components {components} --seed {seed}"
    )


# --------------------------------------------------------------------------- reporting


def _verdict(auroc: float) -> str:
    if auroc < 0.5:
        return "inverted: the OOD images look *more* likely than the in-distribution ones"
    return "detects" if auroc >= 0.9 else "weak"


def ood_markdown(doc: dict[str, Any]) -> str:
    """The OOD table of a document from :func:`ood_for_run`, global and per-pixel side by side."""
    p, models = doc["protocol"], doc["models"]
    labels = sorted(models, key=lambda m: (not m.startswith("global"), m))  # global first, then per-pixel
    head = " | ".join(f"{m} {col}" for m in labels for col in ("AUROC", "AUPRC", "FPR@95%TPR"))
    lines = [
        f"# OOD detection: trained on {doc['trained_on']}, in = {doc['in']} test, out = {doc['out']} test",
        "",
        f"Protocol: first {p['n_in']} test images of each set, IWAE k = {p['k']}, seed {p['seed']}, GMM K = "
        f"{p['gmm']['K']} (fit on {p['gmm']['fit_on']}s), typicality reference: {p['reference']['n']} "
        f"{p['reference']['images']}. Positive class: OOD; every score is 'higher = more OOD'. "
        f"Chance: AUROC 0.5, AUPRC {p['n_out'] / (p['n_in'] + p['n_out']):.2f}, FPR 0.95.",
        "",
        "Models: " + "; ".join(f"{m} = `{models[m]['checkpoint']}` ({models[m]['likelihood']})" for m in labels),
        "",
        f"| score | {head} |",
        "|---|" + "---:|" * (3 * len(labels)),
    ]
    names = list(models[labels[0]]["metrics"])
    names = [s for s in SCORES if s in names] + [s for s in names if s not in SCORES]  # JSON sorts its keys
    for s in names:
        cells = []
        for m in labels:
            r = models[m]["metrics"].get(s)
            cells += [f"{r['auroc']:.3f}", f"{r['auprc']:.3f}", f"{r['fpr_at_95_tpr']:.3f}"] if r else ["-"] * 3
        desc = SCORES.get(s, "").replace("|", "\\|")  # a pipe would end the cell
        lines.append(f"| {s}: {desc} | " + " | ".join(cells) + " |")
    lines += ["", "Mean log-likelihood per image (nats), in-distribution vs OOD:", ""]
    for m in labels:
        ll = models[m]["log_likelihood"]
        lines.append(
            f"- {m}: "
            + "; ".join(f"{s} {ll['in'][s]:.1f} vs {ll['out'][s]:.1f}" for s in names if s in ll["in"])
            + f"; reference (typicality) {models[m]['reference_log_likelihood']:.1f}"
        )
    lines += ["", "Reading:", ""]
    for m in labels:
        for s in names:
            r = models[m]["metrics"][s]
            lines.append(f"- {m} {s}: AUROC {r['auroc']:.3f}, {_verdict(r['auroc'])}")
    lines += [
        "",
        f"Command: `{p['command']}`",
        "",
        f"Commit {doc['provenance']['git_commit']}"
        + (" (uncommitted changes)" if doc["provenance"].get("git_dirty") else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def write_ood(doc: dict[str, Any], results_dir: str | Path) -> list[Path]:
    """Write ``<in>-vs-<out>.json`` and ``.md`` into ``results_dir``; returns the paths."""
    results_dir = Path(results_dir).expanduser()
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['trained_on']}-run_{doc['in']}-vs-{doc['out']}"
    write_json_atomic(results_dir / f"{stem}.json", doc)
    write_text_atomic(results_dir / f"{stem}.md", ood_markdown(doc))
    return [results_dir / f"{stem}.json", results_dir / f"{stem}.md"]
