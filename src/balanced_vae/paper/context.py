"""What every experiment of one (dataset, budget, out) shares: the data, the runs it reads (trained,
resumed or reused) and their evaluations, cached per run under the budget's protocol."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CHECKPOINT, FINAL
from ..data import Dataset, load_dataset
from ..distributed import resolve_device
from ..evaluate import evaluate_run
from ..fid_sets import real_data_fid
from ..latent import kl_gap
from ..provenance import file_digest, git_commit, git_dirty, provenance, short_commit
from ..runs import Run, load_run, model_sha256
from ..samplers import DEFAULT_COMPONENTS
from ..version import __version__
from .budgets import PAPER, Budget, resolved_budget
from .experiments import ensure_run, final_weights, run_dir

log = logging.getLogger(__name__)


class Context:
    """What every experiment of one (dataset, budget, out) needs: data, runs, cached evaluations.

    ``device`` trains the runs and runs the Inception network (``auto``: CUDA when available, else the CPU).
    """

    def __init__(
        self,
        dataset: str,
        budget: Budget,
        out: str | Path,
        *,
        data: Dataset | None = None,
        progress: bool = True,
        device: str | None = "auto",
        fid_backend: str = "auto",
    ) -> None:
        self.dataset, self.budget, self.out, self.progress = dataset, budget, Path(out), progress
        self.device = device
        self.fid_backend = fid_backend  # recorded in each FID protocol; not part of the cache keys
        self.folder = self.out / f"{dataset}-{budget.name}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data = data if data is not None else load_dataset(dataset)
        self.k_default = DEFAULT_COMPONENTS
        self.extra_runs = budget.extra_runs
        self._row_commits: list[str] = []  # commits of the numbers read since the last take_commits()
        self.start_experiment()

    def start_experiment(self) -> None:
        """Forget the runs and evaluations read so far (see :meth:`compute`)."""
        self._runs_read: set[str] = set()
        self._eval_seconds = 0.0

    def compute(self) -> dict[str, float]:
        """The work behind the numbers read since :meth:`start_experiment`, wherever and whenever it
        ran (cached runs and evaluations included): training seconds summed over the runs' stages
        (``final.json``; a stage taken from another run at its switch counts there, once) and seconds
        summed over the evaluations (their records)."""
        train = 0.0
        for name in self._runs_read:
            final = run_dir(self.out, self.dataset, self.budget, name) / FINAL
            stops = json.loads(final.read_text()).get("stops", {}) if final.exists() else {}
            train += sum(s.get("seconds") or 0.0 for s in stops.values() if "branched_from" not in s)
        return {"training_seconds": round(train, 1), "evaluation_seconds": round(self._eval_seconds, 1)}

    def note_commit(self, record: dict | None = None) -> None:
        """Note the commit that computed a number of the row being built (the code running now when
        ``record`` is None, else the provenance ``record`` holds)."""
        c = short_commit(record if record is not None else {"git_commit": git_commit(), "git_dirty": git_dirty()})
        self._row_commits.append(c or "unknown")

    def take_commits(self) -> str | None:
        """The commits of the numbers of the row just built (comma-separated, once each); resets."""
        out, self._row_commits = ", ".join(dict.fromkeys(self._row_commits)) or None, []
        return out

    def run(self, name: str, *, weights: bool = True) -> Path:
        """The folder of run ``name``, reused, resumed or trained (:func:`~.experiments.ensure_run`); ``weights``:
        the caller loads its weights, so a finished run kept as records only is an error that says so."""
        self._runs_read.add(name)
        path = ensure_run(
            self.out, self.dataset, self.budget, name, data=self.data, progress=self.progress, device=self.device
        )
        if weights and not (path / CHECKPOINT).exists():
            raise weights_gone(
                path, CHECKPOINT, "this experiment reads the weights themselves, not only cached evaluations"
            )
        return path

    def evaluate(
        self,
        name: str,
        metric: str,
        *,
        sampler: str = "prior",
        components: int | None = None,
        which: str = CHECKPOINT,
        n_fid: int | None = None,
    ) -> dict[str, Any]:
        """``evaluate_run`` of one metric, cached in ``RUN/eval/`` under its protocol's key."""
        b, k = self.budget, components or self.k_default
        n_fid = n_fid or b.n_fid
        path = self.run(name, weights=False)
        key = self.eval_key(metric, sampler=sampler, components=components, which=which, n_fid=n_fid)
        cache = path / "eval" / f"{key}.json"
        weights = path / which
        if cache.exists():  # valid only for the weights it was computed from
            entry = json.loads(cache.read_text())["metrics"][metric]
            prov = entry.get("provenance", {})
            if same_weights(prov, weights) if weights.exists() else final_record(prov, path, which):
                self.note_commit(entry["provenance"])
                self._eval_seconds += entry.get("seconds") or 0.0
                return entry
            if weights.exists():
                log.info("%s: computed from other weights; recomputing", cache)
        if not weights.exists():
            found = (
                f"{cache} was computed from other weights than the {which} its final.json names"
                if cache.exists()
                else f"it has no record {cache.name} ({metric} under this protocol)"
            )
            raise weights_gone(path, which, found)
        protocol = b.protocol().replace(sampler=sampler, components=k, n_fid=n_fid, fid_backend=self.fid_backend)
        doc = evaluate_run(
            path,
            protocol,
            (metric,),
            which=which,
            data=self.data,
            cache_dir=self.out / "fid-cache",
            out=cache,
            progress=self.progress,
            device=self._inception_device(),
        )
        self.note_commit(doc["metrics"][metric]["provenance"])
        self._eval_seconds += doc["metrics"][metric].get("seconds") or 0.0
        return doc["metrics"][metric]

    def fid(self, name: str, sampler: str, components: int | None = None, n: int | None = None) -> float:
        """FID of run ``name``'s decoder means under ``sampler`` on ``n`` images (the budget's n_fid when None)."""
        return self.evaluate(name, "fid", sampler=sampler, components=components, n_fid=n)["values"]["fid"]

    def kl_gap(self, run: Run, *, aggregate: bool, fit_on: str) -> dict:
        """:func:`~balanced_vae.latent.kl_gap` of ``run`` under the budget: KL(q_GMM || p) (and, with
        ``aggregate``, KL(q_agg || p), Eq. 12) for the GMM of Eq. 13 with the default K fitted on
        ``fit_on`` codes, p = N(0, I); n_kl samples per estimate, kl_runs estimates, the budget's seed."""
        return kl_gap(
            run,
            components=self.k_default,
            n=self.budget.n_kl,
            runs=self.budget.kl_runs,
            seed=self.budget.seed,
            data=self.data,
            aggregate=aggregate,
            fit_on=fit_on,
        )

    def real_fid(self, n: int | None = None) -> float:
        """FID of ``n`` real training vs ``n`` test images (the budget's n_fid when None), cached."""
        n = n or self.budget.n_fid
        cache = self.folder / f"real_fid_n{n}.json"
        if not cache.exists():
            real_data_fid(
                self.dataset,
                n=n,
                cache_dir=self.out / "fid-cache",
                out=cache,
                backend=self.fid_backend,
                paper_value=PAPER["table2"].get(self.dataset, {}).get("real"),
                device=self._inception_device(),
                progress=self.progress,
            )
        doc = json.loads(cache.read_text())
        self.note_commit(doc.get("provenance"))
        return doc["fid_train_vs_test"]

    def eval_key(
        self,
        metric: str,
        *,
        sampler: str = "prior",
        components: int | None = None,
        which: str = CHECKPOINT,
        n_fid: int | None = None,
    ) -> str:
        """The name of the cache file (``RUN/eval/KEY.json``) of one evaluation under this budget."""
        b, k = self.budget, components or self.k_default
        return (
            f"{metric}_{sampler}"
            + (f"_K{k}" if sampler == "gmm" else "")
            + {"fid": f"_n{n_fid or b.n_fid}", "iwae": f"_n{b.n_iwae}_k{b.k_iwae}"}.get(metric, "")
            + ("" if which == CHECKPOINT else f"_{Path(which).stem}")
        )

    def _inception_device(self) -> str:
        return str(resolve_device(self.device))

    def protocol(self, **extra) -> dict[str, Any]:
        dev = self._inception_device()
        machine = f"{platform.machine()}, {platform.processor() or 'cpu'}"
        if dev.startswith("cuda"):
            machine += f", GPU {torch.cuda.get_device_name(torch.device(dev))}"
        prov = provenance()
        return {
            "dataset": self.dataset,
            "budget": resolved_budget(self.budget),
            "package_version": __version__,
            **{k: prov[k] for k in ("git_commit", "git_dirty", "git_dirty_files") if k in prov},
            "machine": machine,
            "device": dev,
            "python": platform.python_version(),
            **extra,
        }


def weights_gone(path: Path, which: str, why: str) -> ValueError:
    """The error for a run kept as records only (``which`` gone) when ``why`` needs more than its records."""
    return ValueError(
        f"{path} keeps the records of a finished run but not its weights ({which}), and {why}; copy {which} back, "
        f"or delete {path} to train it again"
    )


def final_record(prov: dict, run: Path, which: str) -> bool:
    """Whether a record (its provenance ``prov``) of a run whose ``which`` file is gone was computed from the
    weights that file held when the run finished, as its ``final.json`` names them (``final_weights``)."""
    named = final_weights(run).get(which)
    if not named:
        return False
    if named.get("sha256") and prov.get("checkpoint_sha256") == named["sha256"]:
        return True
    return bool(prov.get("model_sha256")) and prov["model_sha256"] == named.get("model_sha256")


def same_weights(prov: dict, checkpoint: Path) -> bool:
    """Whether a record (its provenance ``prov``) was computed from the weights in ``checkpoint``:
    the same file, or the same model weights in a file packed differently (e.g. without the
    optimiser state, as ``bench/gpu_protocol.sh`` packs the headline models)."""
    if prov.get("checkpoint_sha256") == file_digest(checkpoint):
        return True
    return bool(prov.get("model_sha256")) and prov["model_sha256"] == model_sha256(
        load_run(checkpoint.parent, which=checkpoint.name).model
    )
