"""One typed spec per table or figure of the paper (Section 5): the evaluations it reads and its row.

A spec names the (run, metric, options) evaluations its experiment reads, so that
:func:`balanced_vae.paper.reproduce.needs` can compute them ahead (``--jobs``), and the
dataclass of one row of its record, which :mod:`.reproduce` writes and
:mod:`.results_page` reads back (:meth:`Spec.rows`): the results schema in one place.
Experiments without a spec (fig2-fig4) read no cached evaluation and write no rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import STAGE1
from .budgets import TABLE2_METHODS, Budget, fixed_run_name


@dataclass(frozen=True)
class Evaluation:
    """One cached evaluation an experiment reads: ``metric`` of run ``run`` with ``options``
    (``sampler``, ``components``, ``which``, ``n_fid``) of :meth:`~.reproduce.Context.evaluate`."""

    run: str
    metric: str
    options: dict[str, Any] = field(default_factory=dict)


class Row:
    """A row of a table's record; rows read back from older records may lack the later columns."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Table1Row(Row):
    """Table 1: a 2-D latent model at one sigma^2: its KL gaps (GMM fitted on samples and on means)."""

    sigma2: str  # "1", "0.5", "learned", "0.01"
    sigma2_value: float | None = None
    kl_gmm_mean: float | None = None
    kl_gmm_std: float | None = None
    kl_gmm_means_fit: float | None = None
    kl_agg_mean: float | None = None
    kl_agg_std: float | None = None
    paper_kl_gmm: float | None = None
    paper_sigma2: float | None = None
    commit: str | None = None


@dataclass
class Table2Row(Row):
    """Table 2: FID of one method under one sampler (or of real train vs test images)."""

    method: str
    sampler: str
    fid: float | None = None
    paper_fid: float | None = None
    commit: str | None = None


@dataclass
class Table3Row(Row):
    """Table 3: IWAE log-likelihood (nats per image) and bits/dim of one model, prior and GMM p(z)."""

    model: str
    iwae_prior: float | None = None
    iwae_gmm: float | None = None
    bpd_prior: float | None = None
    bpd_gmm: float | None = None
    paper_iwae: float | None = None
    commit: str | None = None


@dataclass
class Table4Row(Row):
    """Table 4: FID of GMM samples with K components and the fit's held-out score (K a string: real images)."""

    K: int | str
    fid: float | None = None
    heldout_loglik: float | None = None
    fit_seconds: float | None = None
    commit: str | None = None


@dataclass
class Fig1Row(Row):
    """Figure 1: one sigma^2 (fixed, or the learned one): test ELBO, FID of prior and GMM samples, KL gap."""

    run: str
    sigma2: float
    learned: bool
    test_elbo: float | None = None
    fid_prior: float | None = None
    fid_gmm: float | None = None
    kl_gmm: float | None = None
    commit: str | None = None


@dataclass(frozen=True)
class Spec:
    """What one experiment reads (``evaluations(budget, extra_runs)``) and the type of its rows."""

    name: str
    row: type
    evaluations: Callable[[Budget, tuple[str, ...]], list[Evaluation]] = lambda budget, extra_runs: []

    def rows(self, record: dict[str, Any]) -> list:
        """The rows of a record this experiment wrote, typed."""
        return [self.row.from_dict(r) for r in record.get("rows", [])]


def _table2(budget: Budget, extra_runs: tuple[str, ...]) -> list[Evaluation]:
    return [Evaluation(m, "fid", {"sampler": "prior"}) for m in TABLE2_METHODS] + [
        Evaluation(m, "fid", {"sampler": "gmm"}) for m in ("learned", *extra_runs)
    ]


def _table3(budget: Budget, extra_runs: tuple[str, ...]) -> list[Evaluation]:
    return [Evaluation("learned", "iwae", {"sampler": "gmm", "which": STAGE1})] + [
        Evaluation(m, "iwae", {"sampler": "gmm"}) for m in ("learned", *extra_runs, "vae", "beta-vae", "dip-vae-i")
    ]


def _table4(budget: Budget, extra_runs: tuple[str, ...]) -> list[Evaluation]:
    n = budget.n_fid_ablation or budget.n_fid
    return [Evaluation("learned", "fid", {"sampler": "gmm", "components": k, "n_fid": n}) for k in budget.components]


def _fig1(budget: Budget, extra_runs: tuple[str, ...]) -> list[Evaluation]:
    n = budget.n_fid_ablation or budget.n_fid
    out = []
    for run in ["learned"] + [fixed_run_name(s2) for s2 in budget.fixed_sigma2]:  # longest first
        out.append(Evaluation(run, "elbo", {"which": STAGE1} if run == "learned" else {}))
        out += [Evaluation(run, "fid", {"sampler": s, "n_fid": n}) for s in ("prior", "gmm")]
    return out


SPECS = {
    s.name: s
    for s in (
        Spec("table1", Table1Row),
        Spec("table2", Table2Row, _table2),
        Spec("table3", Table3Row, _table3),
        Spec("table4", Table4Row, _table4),
        Spec("fig1", Fig1Row, _fig1),
    )
}
