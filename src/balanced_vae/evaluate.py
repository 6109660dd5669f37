"""Evaluate a trained run: the paper's metrics with their protocol (Section 5, Tables 1-3, Figures 1 and 3).

:func:`evaluate_run` is the function behind ``balanced-vae evaluate RUN --metrics ...``.
It computes any of

* ``elbo`` -- the test ELBO (Eq. 9 / Eq. 11) and its two terms, over the whole test split;
* ``iwae`` -- the IWAE bound on log p(x) (k = 20 on 500 test images, Table 3), with the
  prior and, when ``sampler`` is not the prior, with that sampler as p(z); each also on
  dequantised data, with bits per dimension;
* ``fid`` -- FID of ``n_fid`` decoded samples from ``sampler`` against the first ``n_fid``
  test images, TF-Inception features (:mod:`balanced_vae.fid`);
* ``kl`` -- Monte-Carlo KL(q_GMM || p) (the paper's Table 1), KL(q_agg || p) and
  KL(q_agg || q_GMM), with q_agg the aggregate posterior of the training codes (Eq. 12)
  and q_GMM its GMM (Eq. 13), fitted on samples of q(z) unless ``gmm_fit_on`` says otherwise;
* ``calibration`` -- Spearman correlation of predicted per-pixel sigma^2 with the squared
  error, and test NLL with the predicted variance versus the global sigma*^2 (Figure 3);
* ``pr`` -- improved precision (fidelity) and recall (coverage) of Kynkaanniemi et al. (2019)
  with k = ``k_pr`` nearest neighbours on the same Inception features as FID: ``n_pr``
  decoded samples of the prior and of ``sampler`` against the first ``n_pr`` test images
  (:mod:`balanced_vae.precision_recall`);

and writes them to ``RUN/results.json``: one entry per metric, each with its numbers,
its protocol (data set, split, counts, k, seeds, sampler and K, Inception
implementation and preprocessing) and its provenance (package version, git commit,
checkpoint digest, time). Entries of metrics not recomputed are kept.

:func:`reconstruct_run` writes Figure 3's picture; FID between image sets (the sanity
figure FID(train, test)) is :mod:`balanced_vae.fid_sets`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json_atomic
from .checkpoint import CHECKPOINT
from .data import Dataset
from .fid import (
    backend_protocol,
    inception_features,
    inception_path,
    inception_protocol,
    resolve_backend,
    small_n_warning,
)

# importable from here as before they moved to fid_sets
from .fid_sets import fid_between, real_data_fid  # noqa: F401
from .fid_stats import real_statistics
from .metrics import (
    calibration,
    dequantised_log_likelihood,
    elbo,
    frechet_distance,
    gaussian_statistics,
    iwae_log_likelihood,
)
from .plots import save_rows
from .precision_recall import improved_precision_recall
from .protocol import METRICS, PAPER, EvalProtocol
from .provenance import provenance
from .runs import Run, load_run, make_sampler, model_sha256
from .samplers import kl_monte_carlo
from .table_run import is_table_run, table_units
from .writes import save

log = logging.getLogger(__name__)

RESULTS = "results.json"


# --------------------------------------------------------------------------- helpers


def parse_metrics(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"elbo,iwae"`` or a list -> validated tuple of metric names, in the given order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [n for n in names if n not in REGISTRY]
    if bad or not names:
        raise ValueError(f"unknown or no metrics {bad or names}; choose from {','.join(REGISTRY)}")
    return tuple(dict.fromkeys(names))


def _dataset_label(config) -> str:
    return config.dataset + (f"@{config.image_size}" if config.image_size else "")


def _summary(v: torch.Tensor) -> dict[str, float]:
    """Mean and standard error of the mean of per-image values (N,)."""
    v = v.double()
    sem = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "sem": sem}


def _load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; replacing it", path)
        return {}
    return old if isinstance(old, dict) else {}


# --------------------------------------------------------------------------- metrics on a run


def _metric_elbo(run, x_test: torch.Tensor, *, seed: int, batch_size: int = 1000) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    terms = {"elbo": [], "rec": [], "kl": []}
    for i in range(0, len(x_test), batch_size):
        t = elbo(run.model, x_test[i : i + batch_size], generator=g)
        for key in terms:
            terms[key].append(t[key])
    values = {key: _summary(torch.cat(v)) for key, v in terms.items()}
    return {
        "values": values,
        "protocol": {
            "split": "test",
            "n": len(x_test),
            "z_per_image": 1,
            "kl": "closed form",
            "seed": seed,
            "equation": "Eq. 11" if run.stage == 2 else "Eq. 9",
            "likelihood": run.model.likelihood.describe(),
            "units": "nats per image",
        },
    }


def _metric_iwae(
    run, x: torch.Tensor, priors: dict[str, Any], *, k: int, seed: int, levels: int | None
) -> dict[str, Any]:
    """IWAE per p(z); dequantised IWAE and bits/dim only for data quantised to ``levels`` levels."""
    values = {}
    for name, prior in priors.items():
        t0 = time.perf_counter()
        ll = iwae_log_likelihood(run.model, x, k, prior=prior, generator=torch.Generator().manual_seed(seed))
        values[name] = {"log_likelihood": _summary(ll)}
        if levels is not None:
            deq = dequantised_log_likelihood(
                run.model, x, k, prior=prior, levels=levels, generator=torch.Generator().manual_seed(seed)
            )
            values[name].update(
                {
                    "dequantised_log_likelihood": _summary(deq["log_likelihood"]),
                    "bits_per_dim": _summary(deq["bits_per_dim"]),
                }
            )
        values[name]["seconds"] = round(time.perf_counter() - t0, 2)
    d = int(math.prod(x.shape[1:]))
    proto = {
        "split": "test",
        "n": len(x),
        "images": f"first {len(x)}",
        "k": k,
        "seed": seed,
        "bound": "IWAE (Burda et al. 2016): E[logsumexp_k log w_k - log k]",
        "levels": levels,
        "priors": list(priors),
        "units": "nats per image",
    }
    if levels is None:
        proto["bits_per_dim"] = "not reported: the data are not quantised (resized or float images)"
    else:
        proto["dequantisation"] = f"x + u, u ~ U(0, 1/{levels}) per pixel, drawn before z"
        proto["bits_per_dim"] = f"-(ll - D log {levels}) / (D log 2), D = {d}"
    return {"values": values, "protocol": proto}


def _metric_fid(
    run,
    sampler,
    x_test: torch.Tensor,
    *,
    n: int,
    seed: int,
    dataset: str,
    batch_size: int,
    cache_dir,
    data_dir,
    device,
    progress: bool,
    backend: str = "auto",
) -> dict[str, Any]:
    t0 = time.perf_counter()
    mu_r, cov_r, real = real_statistics(
        dataset,
        x_test,
        split="test",
        n=n,
        data_dir=data_dir,
        cache_dir=cache_dir,
        batch_size=batch_size,
        device=device,
        progress=progress,
        backend=backend,
    )
    z = sampler.sample(n, generator=torch.Generator().manual_seed(seed))  # (n, L)
    with torch.no_grad():
        x_gen = torch.cat([run.model.decode_mean(z[i : i + 1000]) for i in range(0, n, 1000)])  # (n, C, H, W)
    feats = inception_features(
        x_gen,
        batch_size=batch_size,
        device=device,
        backend=backend,
        cache_dir=cache_dir,
        progress=progress,
        desc="generated features",
    )
    mu_g, cov_g = gaussian_statistics(feats)
    fid = frechet_distance(mu_g, cov_g, mu_r, cov_r)
    warning = small_n_warning(n, f"FID of {dataset}")
    return {
        "values": {"fid": fid, "seconds": round(time.perf_counter() - t0, 1)},
        "protocol": {
            "generated": {"n": n, "seed": seed, "images": "decoder means g(z), z from the sampler"},
            "real": {k: real[k] for k in ("dataset", "split", "n", "images", "cache_hit", "backend")},
            "inception": inception_protocol(),
            "backend": backend_protocol(backend, device),
            **({"warning": warning} if warning else {}),
        },
    }


def _metric_pr(
    run,
    samplers: dict[str, Any],
    x_test: torch.Tensor,
    *,
    n: int,
    k: int,
    seed: int,
    batch_size: int,
    device,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    real = inception_features(
        x_test[:n], batch_size=batch_size, device=device, progress=progress, desc="real features"
    )  # (n, 2048)
    values = {}
    for name, sampler in samplers.items():
        t1 = time.perf_counter()
        z = sampler.sample(n, generator=torch.Generator().manual_seed(seed))  # (n, L)
        with torch.no_grad():
            x_gen = torch.cat([run.model.decode_mean(z[i : i + 1000]) for i in range(0, n, 1000)])  # (n, C, H, W)
        gen = inception_features(
            x_gen, batch_size=batch_size, device=device, progress=progress, desc=f"{name} features"
        )  # (n, 2048)
        values[name] = {**improved_precision_recall(real, gen, k=k), "seconds": round(time.perf_counter() - t1, 1)}
        log.info("%s: precision %.3f, recall %.3f", name, values[name]["precision"], values[name]["recall"])
    return {
        "values": values,
        "protocol": {
            "generated": {"n": n, "seed": seed, "images": "decoder means g(z), z from each sampler"},
            "real": {"split": "test", "n": n, "images": f"first {n}"},
            "k": k,
            "metric": "improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls on Inception pool features",
            "samplers": list(samplers),
            "inception": inception_protocol(),
            "real_feature_seconds": round(time.perf_counter() - t0, 1),
        },
    }


def _metric_kl(q_agg, prior, gmm, *, n: int, runs: int, seed: int, progress: bool) -> dict[str, Any]:
    """The three KLs between the aggregate posterior (Eq. 12), its GMM (Eq. 13) and the prior, named exactly.

    ``KL(q_GMM || p)`` is the paper's Table 1 quantity; the other two say how far the prior
    and the GMM are from the exact aggregate posterior.
    """
    pairs = {"KL(q_GMM || p)": (gmm, prior), "KL(q_agg || p)": (q_agg, prior), "KL(q_agg || q_GMM)": (q_agg, gmm)}
    values = {
        name: kl_monte_carlo(q, p, n=n, runs=runs, seed=seed, progress=progress, desc=name)
        for name, (q, p) in pairs.items()
    }
    return {
        "values": values,
        "protocol": {
            "q_agg": "aggregate posterior of the training codes (Eq. 12)",
            "q_GMM": "the GMM (Eq. 13)",
            "p": "N(0, I)",
            "n": n,
            "runs": runs,
            "seed": seed,
            "estimator": "mean of log q(z) - log p(z) over n samples z ~ q, per run; the paper's "
            "Table 1 reports KL(q_GMM || p)",
            "units": "nats",
        },
    }


def _metric_calibration(run, x_test: torch.Tensor, *, batch_size: int = 1000) -> dict[str, Any]:
    means, logvars = [], []
    with torch.no_grad():
        for i in range(0, len(x_test), batch_size):
            mu, _ = run.model.encode(x_test[i : i + batch_size])
            mean, logvar = run.model.decode(mu)  # (b, C, H, W), broadcastable
            means.append(mean)
            logvars.append(torch.broadcast_to(logvar, mean.shape))
    sigma2_star = float(run.checkpoint.get("sigma2_star") or run.model.likelihood.sigma2)
    values = calibration(x_test, torch.cat(means), torch.cat(logvars), sigma2_global=sigma2_star)
    return {
        "values": values,
        "protocol": {
            "split": "test",
            "n": len(x_test),
            "z": "posterior mean mu(x)",
            "predicted": "per-pixel sigma^2 (Eq. 11)" if run.stage == 2 else "global sigma^2 (Eq. 9)",
            "global": "sigma*^2 of the checkpoint (Eq. 10, end of stage 1)",
            "spearman": "over all test pixels, predicted sigma^2 vs (x - g(mu))^2",
        },
    }


# --------------------------------------------------------------------------- the registry


class EvalRun:
    """A run under evaluation: the :class:`~balanced_vae.runs.Run`, its checked data and test images,
    its samplers (each built once) and where the networks run (``device``, FID ``cache_dir``)."""

    def __init__(
        self,
        run: Run,
        protocol: EvalProtocol,
        data: Dataset,
        *,
        data_dir=None,
        cache_dir=None,
        device=None,
        progress: bool = True,
    ) -> None:
        self.run, self.protocol, self.data = run, protocol, data
        self.x_test = data.x_test  # (N, C, H, W)
        self.data_dir, self.cache_dir, self.device, self.progress = data_dir, cache_dir, device, progress
        self._samplers: dict[tuple[str, str], Any] = {}

    @property
    def model(self):
        return self.run.model

    def sampler(self, kind: str, fit_on: str = "mean"):
        """The run's sampler of ``kind``; GMMs are cached per ``fit_on``."""
        key = (kind, fit_on if kind == "gmm" else "")
        if key not in self._samplers:
            log.info("building the %s sampler", kind)
            self._samplers[key] = make_sampler(
                kind, self.run, components=self.protocol.components, data=self.data, fit_on=fit_on
            )
        return self._samplers[key]

    def label(self, kind: str, fit_on: str = "mean") -> str:
        return f"gmm_K{self.sampler(kind, fit_on).n_components}" if kind == "gmm" else kind

    def gmm_protocol(self, fit_on: str) -> dict[str, Any]:
        g = self.sampler("gmm", fit_on)
        return {
            "K": g.n_components,
            "fit_on": g.fit_on,
            "covariance_type": g.covariance_type,
            "random_state": g.random_state,
            "n_fit": g.n_fit_,
            "converged": g.converged_,
            "codes": f"{'posterior means' if g.fit_on == 'mean' else 'one z ~ q(z|x) per image'} "
            f"of the training images",
        }

    def with_sampler(self, fit_on: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The prior and, unless it is the prior, the protocol's sampler fitted on ``fit_on``, by label; and the
        protocol entries that name it (its GMM's fit)."""
        kind = self.protocol.sampler
        samplers, extra = {"prior": self.sampler("prior")}, {}
        if kind != "prior":
            samplers[self.label(kind, fit_on)] = self.sampler(kind, fit_on)
            if kind == "gmm":
                extra["gmm"] = self.gmm_protocol(fit_on)
        return samplers, extra


def _with(entry: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    entry["protocol"].update(extra)
    return entry


def _in_units(entry: dict[str, Any], run: Run) -> dict[str, Any]:
    """A density metric's entry, with the units of a table run (densities of its standardised rows)."""
    if is_table_run(run):
        entry["protocol"].update(table_units(run))
    return entry


def elbo_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """The test ELBO (Eq. 9 / Eq. 11) and its two terms over the whole test split."""
    return _in_units(_metric_elbo(ev.run, ev.x_test, seed=p.seed), ev.run)


def iwae_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """The IWAE bound with the prior and the protocol's sampler as p(z) (its GMM fitted as a density)."""
    priors, extra = ev.with_sampler(p.fit_density)
    entry = _metric_iwae(ev.run, ev.x_test[: p.n_iwae], priors, k=p.k, seed=p.seed, levels=ev.data.levels)
    return _in_units(_with(entry, extra), ev.run)


def fid_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """FID of ``n_fid`` decoded samples of the protocol's sampler against the first ``n_fid`` test images."""
    c = ev.run.config
    entry = _metric_fid(
        ev.run,
        ev.sampler(p.sampler, p.fit_sampling),
        ev.x_test,
        n=p.n_fid,
        seed=p.seed,
        dataset=_dataset_label(c),
        batch_size=p.fid_batch_size,
        cache_dir=ev.cache_dir,
        data_dir=ev.data_dir or c.data_dir,
        device=ev.device,
        progress=ev.progress,
        backend=p.fid_backend,
    )
    extra = {"sampler": ev.label(p.sampler, p.fit_sampling)}
    if p.sampler == "gmm":
        extra["gmm"] = ev.gmm_protocol(p.fit_sampling)
    return _with(entry, extra)


def pr_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """Improved precision and recall of the prior and the protocol's sampler."""
    samplers, extra = ev.with_sampler(p.fit_sampling)
    return _with(
        _metric_pr(
            ev.run,
            samplers,
            ev.x_test,
            n=p.n_pr,
            k=p.k_pr,
            seed=p.seed,
            batch_size=p.fid_batch_size,
            device=ev.device,
            progress=ev.progress,
        ),
        extra,
    )


def kl_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """The three Monte-Carlo KLs between q_agg, q_GMM (fitted as a density) and the prior (Table 1)."""
    entry = _metric_kl(
        ev.sampler("aggregate"),
        ev.sampler("prior"),
        ev.sampler("gmm", p.fit_density),
        n=p.n_kl,
        runs=p.kl_runs,
        seed=p.seed,
        progress=ev.progress,
    )
    return _with(entry, {"gmm": ev.gmm_protocol(p.fit_density)})


def calibration_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """Figure 3's calibration of the predicted per-pixel variance on the test split."""
    return _metric_calibration(ev.run, ev.x_test)


#: every metric of ``balanced-vae evaluate``: name -> f(run under evaluation, protocol) -> record
REGISTRY: dict[str, Callable[[EvalRun, EvalProtocol], dict[str, Any]]] = {
    "elbo": elbo_metric,
    "iwae": iwae_metric,
    "fid": fid_metric,
    "kl": kl_metric,
    "calibration": calibration_metric,
    "pr": pr_metric,
}
assert tuple(REGISTRY) == METRICS, "protocol.METRICS names the registry's metrics, in its order"
#: the counts of the protocol each metric reads from the test split
COUNTS = {"iwae": "n_iwae", "fid": "n_fid", "pr": "n_pr"}


# --------------------------------------------------------------------------- the command


def _clipped(name: str, default: int, available: int, dataset: str) -> int:
    """A default count, clipped to the test images there are, with a notice."""
    if default <= available:
        return default
    log.warning(
        "%s: the test split of %s has %d images, fewer than the default %d; using %d",
        name,
        dataset,
        available,
        default,
        available,
    )
    return available


def fit_counts(protocol: EvalProtocol, names: Iterable[str], available: int, dataset: str) -> EvalProtocol:
    """``protocol`` with its :attr:`~EvalProtocol.clip` counts clipped to the ``available`` test images; a
    ValueError when a count the metrics ``names`` read exceeds them."""
    clipped = {c: _clipped(c, getattr(protocol, c), available, dataset) for c in protocol.clip}
    protocol = dataclasses.replace(protocol, **clipped)
    for name in names:
        count = COUNTS.get(name)
        n = getattr(protocol, count) if count else None
        if count and not 1 <= n <= available:
            raise ValueError(
                f"{count}={n}: the test split of {dataset} has {available} images; choose 1 <= {count} <= {available}"
            )
    return protocol


def evaluate_run(
    run: Run | str | Path,
    protocol: EvalProtocol | None = None,
    metrics: str | Iterable[str] = ("elbo", "iwae"),
    *,
    data=None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    which: str = CHECKPOINT,
    **changes,
) -> dict[str, Any]:
    """Compute ``metrics`` (names of :data:`REGISTRY`) for ``run`` under ``protocol`` and write them to
    ``RUN/results.json`` (or ``out``); returns the results dictionary written.

    ``run`` is a :class:`~balanced_vae.runs.Run` or its folder (its checkpoint ``which``); ``protocol``
    defaults to :data:`~balanced_vae.protocol.PAPER`, and ``changes`` (its field names: ``n_iwae=50``,
    ``sampler="gmm"``) change it for this call. ``data`` (a :class:`~balanced_vae.data.Dataset`) skips
    loading, ``data_dir`` names the data folder; test metrics use the data set's test split (the
    protocol's counts of the paper are clipped with a notice to the test images there are).
    FID and precision/recall run the Inception network on ``device`` with statistics of real
    images cached in ``cache_dir``. Results of a checkpoint other than ``checkpoint.pt`` go to
    ``RUN/results_<name>.json``. Entries of metrics not recomputed are kept.
    """
    names = parse_metrics(metrics)
    protocol = (protocol or PAPER).replace(**{k: v for k, v in changes.items() if v is not None})
    if "fid" in names or "pr" in names:
        inception_path()  # fail before any work when the network is not installed
        resolve_backend(protocol.fid_backend, device)
    run = run if isinstance(run, Run) else load_run(run, which=which)
    prov = {**provenance(run.path / run.which), "model_sha256": model_sha256(run.model)}  # the weights, however packed
    data = run.dataset(data, data_dir=data_dir)
    protocol = fit_counts(protocol, names, len(data.x_test), run.config.dataset)
    ev = EvalRun(run, protocol, data, data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress)
    results: dict[str, Any] = {}
    for name in names:
        t0 = time.perf_counter()
        log.info("evaluating %s", name)
        entry = REGISTRY[name](ev, protocol)
        entry["protocol"] = {"dataset": run.config.dataset, **entry["protocol"]}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["provenance"] = prov
        results[name] = entry
    return _write_results(run, results, out)


def _write_results(run: Run, results: dict[str, Any], out: str | Path | None) -> dict[str, Any]:
    """Merge ``results`` into the record at ``out`` (default ``RUN/results.json``, or ``RUN/results_NAME.json``
    for a checkpoint ``NAME.pt`` other than ``checkpoint.pt``; entries of other metrics kept) and write it."""
    path = (
        Path(out).expanduser()
        if out is not None
        else run.path / (RESULTS if run.which == CHECKPOINT else f"results_{Path(run.which).stem}.json")
    )
    old = _load_results(path)
    if old and old.get("checkpoint") != run.which:
        log.warning("%s holds results of %s, not %s; replacing them", path, old.get("checkpoint"), run.which)
        old = {}
    c = run.config
    doc = {
        "run": str(run.path),
        "checkpoint": run.which,
        "stage": run.stage,
        "dataset": c.dataset,
        "method": c.method,
        "metrics": {**old.get("metrics", {}), **results},
    }

    def write():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, doc)

    save(path, doc, write)  # a run that cannot be written: the caller gets the results in the error
    log.info("results written to %s", path)
    return {**doc, "path": str(path)}


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
