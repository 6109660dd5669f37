"""FID between image sets (paper Section 5, Table 2): the sanity figure FID(train, test) of a data set's
real images, and FID between any two sets (folders, arrays, a data set's split).

Both record their protocol (counts, the Inception implementation and backend, cache hits)
and provenance, like :func:`balanced_vae.evaluate.evaluate_run`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from . import fid as fid_module  # the network's calls, looked up when used (tests put a stand-in there)
from .data import load_dataset
from .fid import backend_protocol, resolve_backend, small_n_warning
from .fid_stats import real_statistics
from .image_sets import load_image_set
from .metrics import frechet_distance, frechet_distance_features, frechet_distance_to_features
from .provenance import provenance
from .writes import save_json as write_record  # the name this module gave it first

log = logging.getLogger(__name__)


def _fid_doc(
    values: dict[str, Any],
    warning: str | None,
    *,
    t0: float,
    backend: str,
    device: str | None,
    batch_size: int,
    out: str | Path | None,
) -> dict[str, Any]:
    """The record of an FID between two image sets: ``values`` (the FID, the sets and their counts), a
    small-count ``warning`` when there is one, and what every such record holds: seconds since ``t0``,
    the feature backend, the batch, the Inception protocol and provenance. Written to ``out`` when given."""
    doc = {
        **({"warning": warning} if warning else {}),
        **values,
        "seconds": round(time.perf_counter() - t0, 1),
        "backend": backend_protocol(backend, device),
        "batch_size": batch_size,
        "inception": fid_module.inception_protocol(),
        "provenance": provenance(),
    }
    write_record(out, doc)
    return doc


def real_data_fid(
    dataset: str,
    *,
    n: int = 10_000,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    device: str | None = None,
    backend: str = "auto",
    paper_value: float | None = None,
    progress: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Sanity figure: FID between the first ``n`` training and first ``n`` test images of ``dataset``.

    The paper reports 1.9 (MNIST) and 0.7 (Fashion-MNIST) for 10,000 vs 10,000; pass it as
    ``paper_value`` to record it beside ours. Both statistics go through the on-disk
    cache; the record names the feature backend of each (a cached one keeps the backend
    that made it) and the wall time. Writes the result to ``out`` when given.
    """
    fid_module.inception_path()  # fail before any work when the network is not installed
    resolve_backend(backend, device)
    t0 = time.perf_counter()
    data = load_dataset(dataset, data_dir=data_dir)
    stats = {}
    for split, x in (("train", data.x_train), ("test", data.x_test)):
        stats[split] = real_statistics(
            dataset,
            x,
            split=split,
            n=n,
            data_dir=data_dir,
            cache_dir=cache_dir,
            batch_size=batch_size,
            device=device,
            progress=progress,
            backend=backend,
        )
    fid = frechet_distance(stats["train"][0], stats["train"][1], stats["test"][0], stats["test"][1])
    warning = small_n_warning(min(n, len(data.x_train), len(data.x_test)), f"FID of {dataset} train vs test")
    values = {
        "fid_train_vs_test": fid,
        "paper_fid": paper_value,
        "dataset": dataset,
        "n_train": n,
        "n_test": n,
        "images": f"first {n} of each split",
        "cache_hits": {s: stats[s][2]["cache_hit"] for s in stats},
        "statistics_backend": {s: stats[s][2]["backend"] for s in stats},
    }
    return _fid_doc(values, warning, t0=t0, backend=backend, device=device, batch_size=batch_size, out=out)


def fid_between(
    a: str | Path,
    b: str | Path,
    *,
    n: int | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    device: str | None = None,
    backend: str = "auto",
    progress: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """FID between two image sets, each a folder, an ``.npy``/``.npz`` array or ``NAME:SPLIT``.

    The first ``n`` images of each set are used (default: all of a folder or array, the
    first 10,000 of a data set's split); a data set's statistics are cached like every
    real set's (:func:`balanced_vae.fid.real_statistics`). Sets of different image sizes
    or channels are fine: each is resized to 299x299 and grey is repeated to RGB. The
    record holds both sets' sources and counts, the backend and the Inception protocol;
    it is written to ``out`` when given.
    """
    fid_module.inception_path()
    resolve_backend(backend, device)
    if n is not None and n < 2:
        raise ValueError(f"n={n}: FID needs at least 2 images per set")
    t0 = time.perf_counter()
    sides = {}
    for label, spec in (("a", a), ("b", b)):
        s = load_image_set(spec, data_dir=data_dir)
        m = min(n, len(s.x)) if n is not None else (min(10_000, len(s.x)) if s.kind == "dataset" else len(s.x))
        if n is not None and n > len(s.x):
            raise ValueError(f"n={n}: {s.source} holds {len(s.x)} images; lower --n to at most {len(s.x)}")
        info = {**s.describe(), "n": m, "images": f"first {m}"}
        if s.kind == "dataset":
            mu, cov, proto = real_statistics(
                s.dataset,
                s.x,
                split=s.split,
                n=m,
                data_dir=data_dir,
                cache_dir=cache_dir,
                batch_size=batch_size,
                device=device,
                progress=progress,
                backend=backend,
            )
            info.update(cache_hit=proto["cache_hit"], backend=proto["backend"])
            side: tuple | torch.Tensor = (mu, cov)  # a data set: its cached statistics
        else:
            side = fid_module.inception_features(  # a folder or an array: its features (N, 2048)
                s.x[:m],
                batch_size=batch_size,
                device=device,
                backend=backend,
                cache_dir=cache_dir,
                progress=progress,
                desc=f"{label}: {s.source}",
            )
        sides[label] = (side, info)
    (sa, ia), (sb, ib) = sides["a"], sides["b"]
    if isinstance(sa, tuple) and isinstance(sb, tuple):
        fid = frechet_distance(*sa, *sb)
    elif isinstance(sa, tuple) or isinstance(sb, tuple):  # features against statistics: the (N, N) route
        fid = frechet_distance_to_features(*sa, sb) if isinstance(sa, tuple) else frechet_distance_to_features(*sb, sa)
    else:
        fid = frechet_distance_features(sa, sb)
    warning = small_n_warning(min(ia["n"], ib["n"]), f"FID of {a} vs {b}")
    values = {"fid": fid, "a": ia, "b": ib}
    return _fid_doc(values, warning, t0=t0, backend=backend, device=device, batch_size=batch_size, out=out)
