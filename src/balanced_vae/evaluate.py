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

The records themselves (numbers and protocol of each metric) are computed by
:mod:`balanced_vae.run_metrics`; Figure 3's picture is :mod:`balanced_vae.reconstruct`; FID
between image sets (the sanity figure FID(train, test)) is :mod:`balanced_vae.fid_sets`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import fid as fid_module  # the network's calls, looked up when used (tests put a stand-in there)
from .atomic import write_json_atomic
from .checkpoint import CHECKPOINT
from .data import Dataset

# importable from here as before they moved to fid_sets and reconstruct
from .fid_sets import fid_between, real_data_fid  # noqa: F401
from .protocol import METRICS, PAPER, EvalProtocol
from .provenance import provenance
from .reconstruct import reconstruct_run  # noqa: F401
from .run_metrics import calibration_record, elbo_record, fid_record, iwae_record, kl_record, pr_record
from .runs import Run, load_run, make_sampler, model_sha256
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


def _load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; replacing it", path)
        return {}
    return old if isinstance(old, dict) else {}


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
    return _in_units(elbo_record(ev.run, ev.x_test, seed=p.seed), ev.run)


def iwae_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """The IWAE bound with the prior and the protocol's sampler as p(z) (its GMM fitted as a density)."""
    priors, extra = ev.with_sampler(p.fit_density)
    entry = iwae_record(ev.run, ev.x_test[: p.n_iwae], priors, k=p.k, seed=p.seed, levels=ev.data.levels)
    return _in_units(_with(entry, extra), ev.run)


def fid_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """FID of ``n_fid`` decoded samples of the protocol's sampler against the first ``n_fid`` test images."""
    c = ev.run.config
    entry = fid_record(
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
    extra: dict[str, Any] = {"sampler": ev.label(p.sampler, p.fit_sampling)}
    if p.sampler == "gmm":
        extra["gmm"] = ev.gmm_protocol(p.fit_sampling)
    return _with(entry, extra)


def pr_metric(ev: EvalRun, p: EvalProtocol) -> dict[str, Any]:
    """Improved precision and recall of the prior and the protocol's sampler."""
    samplers, extra = ev.with_sampler(p.fit_sampling)
    return _with(
        pr_record(
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
    entry = kl_record(
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
    return calibration_record(ev.run, ev.x_test)


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
    clipped: dict[str, Any] = {c: _clipped(c, getattr(protocol, c), available, dataset) for c in protocol.clip}
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
        fid_module.inception_path()  # fail before any work when the network is not installed
        fid_module.resolve_backend(protocol.fid_backend, device)
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
