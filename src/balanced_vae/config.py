"""Run configuration as data: a frozen dataclass saved as JSON beside every run (house style 6)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .nets import NETS, default_latent_dim, default_width

#: convergence rules of a stage (``TrainConfig.stopping``)
STOPPING = ("best", "endpoints")

#: what a field missing from a saved config.json meant when that run was made: runs written
#: before the field existed re-create (and resume) as they were trained
LEGACY: dict[str, Any] = {
    "stopping": "endpoints",
    "kl_warmup": 0,
    "lr_warmup": 0,
    "net": "small",
    "optimiser": "adam",
    "ema_warmup": False,
    "switch": "fresh",
}

#: the paper family's default learning-rate warm-up in steps (``TrainConfig.lr_warmup=None``): width 16
#: decoded the all-black image from its first MNIST epoch without one (RAdam, lr 1e-3) and learned with
#: 1000 steps (validation KL 52 nats after 3 epochs); width 128 is not measured on a CPU
PAPER_LR_WARMUP = 1000

#: optimisers of every stage (``TrainConfig.optimiser``)
OPTIMISERS = ("radam", "adam")

#: what stage 2's optimiser starts from (``TrainConfig.switch``)
SWITCHES = ("carry", "fresh")


#: the decoder mean g(z) of :attr:`TrainConfig.output`
OUTPUTS = ("sigmoid", "identity")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; ``None`` fields are resolved from the data.

    ``epochs`` is the maximum per stage. A stage also ends when its objective on the
    validation split (the last ``n_val`` training images, never the test split) moved by
    less than ``tol`` nats per data dimension over ``window`` epochs (after at least
    ``min_epochs``), or after ``max_minutes`` of wall-clock time in the stage. Which of the
    three ended each stage is recorded in the checkpoint and ``final.json``.
    ``n_val=None`` holds out 10 % of the training images, at most 5,000.
    ``lr_drops`` > 0 lets a stage go on when its convergence rule fires: the learning rate is
    divided by 10 and the rule's window starts again, up to ``lr_drops`` times per stage; the
    stage ends at the next firing after the last drop (0: Algorithm 1 as the paper states it).

    ``kl_warmup`` > 0 weighs the KL term by ``min(1, step / (kl_warmup x steps per epoch))`` in
    the first ``kl_warmup`` epochs of the first stage, so that large networks learn to use z before
    the prior pulls q(z|x) onto it (without it they can settle on the mean image: posterior
    collapse); from then on the objective is the ELBO itself, and the stopping rule only compares
    epochs after the warm-up. ``lr_warmup`` > 0 raises the learning rate linearly from
    ``lr / lr_warmup`` to ``lr`` over the first ``lr_warmup`` Adam steps of stage 1: without it, wide or
    deep networks at lr 1e-3 drive the decoder's logits to -inf in their first steps (the sigmoid
    saturates on the all-black image, and no gradient reaches z again). ``None`` (the default) is
    resolved from the family: :data:`PAPER_LR_WARMUP` steps for ``net="paper"`` (at most the epoch
    cap's steps), which falls onto that image in its first epoch without it even under RAdam, and 0
    for the others. ``optimiser``: ``"radam"`` (the default; rectified Adam, Liu et al. 2020, whose
    first steps are damped until Adam's second-moment estimate is reliable, and which is Adam
    thereafter) or ``"adam"`` (runs made before 0.2). RAdam is what keeps wide and deep networks out
    of that saturation at lr 1e-3. ``stopping`` picks the convergence rule: ``"best"`` (the default)
    ends a stage when the best validation objective of the last ``window`` epochs beats the best
    before them by less than ``tol`` nats per dimension; ``"endpoints"`` (the rule before 0.2)
    compares only the last epoch with the one ``window`` epochs earlier, which validation noise
    can fire while the objective still rises. ``window`` is 5 (runs made with 3 keep it in their
    config.json): on MNIST a window of 3 ended stage 1 on a four-epoch pause of a validation ELBO
    that rose 14 nats more over the next 16 epochs while the samples' FID kept falling
    (``bench/replay_stopping.py``). ``switch``: stage 2's optimiser goes on with stage 1's
    moments and step counts (``"carry"``, the default; only the new variance head starts from zero)
    or starts fresh (``"fresh"``, runs made before it): a fresh RAdam's first, un-rectified steps on
    gradients scaled by 1/sigma*^2 undid stage 1 of the small network.

    ``ema`` in (0, 1) keeps an exponential moving average of the weights with that decay per step
    (e.g. 0.999), written each epoch to ``ema.pt`` and evaluated as weights of its own
    (:mod:`balanced_vae.ema`); training, stopping and sigma*^2 never read it. ``None``: none kept.
    ``ema_warmup`` (the default) lowers the decay of the n-th step to ``(1 + n) / (10 + n)`` while that
    is smaller, so the average forgets the random initial weights (runs made before it: off).
    ``keep_best`` writes the weights of the stage's best validation epoch so far (after the KL
    warm-up) to ``best.pt``, evaluated as weights of their own (``--checkpoint best.pt``) and in
    ``final.json``; a two-stage run's ``best.pt`` is of stage 2 from its first epoch on.
    ``channels_last`` trains the conv layers on NHWC tensors (weights and batches), faster on some CPUs
    and GPUs for the wider families (``bench/train_levers.py`` measures it); the numbers differ from
    the default layout's by rounding only.

    ``net`` names the built-in network family (:data:`balanced_vae.nets.NETS`): ``small`` (the
    default), ``paper`` (the WAE/RAE conv net) or ``res`` (an efficient residual net).

    ``networks`` names your own networks as an importable factory ``"module:function"``
    (or ``"/path/file.py:function"``), called as ``function(data_shape, latent_dim,
    **network_args)`` and returning ``(encoder, decoder)`` (see :mod:`balanced_vae.factories`);
    ``None`` uses the built-in networks of :mod:`balanced_vae.nets` (and ``width`` and ``blocks``,
    the residual blocks per coarse level of a conv network; 0 is the shallow default).

    ``output`` is the decoder mean g(z) as a function of the decoder network's output:
    ``"sigmoid"`` for data in [0, 1] (images, the paper's setting), ``"identity"`` for
    real-valued data (standardised tables: ``csv:PATH``, a 2-D ``npz:PATH``,
    :class:`~balanced_vae.estimator.BalancedVAE`); ``None`` means sigmoid for images and is
    resolved to ``"identity"`` for a real-valued table (so configs saved before this field
    existed still compare equal on resume).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    method: str = "learned"
    sigma2: float = 0.5
    sigma2_mode: str = "closed_form"
    stages: int = 2
    pixel_floor: float | None = None
    latent_dim: int | None = None
    width: int | None = None
    blocks: int = 0
    net: str = "small"
    batch_size: int = 128
    lr: float = 1e-3
    epochs: int = 30
    min_epochs: int = 3
    tol: float = 1e-3
    window: int = 5
    lr_drops: int = 0
    kl_warmup: int = 0
    lr_warmup: int | None = None
    optimiser: str = "radam"
    stopping: str = "best"
    switch: str = "carry"
    ema: float | None = None
    ema_warmup: bool = True
    keep_best: bool = False
    channels_last: bool = False
    n_val: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    precision: str = "fp32"
    hparams: dict[str, Any] = field(default_factory=dict)
    networks: str | None = None
    network_args: dict[str, Any] = field(default_factory=dict)
    output: str | None = None

    def __post_init__(self) -> None:
        """Refuse values that would be silently replaced or crash later, naming the field."""

        def bad(name: str, rule: str) -> None:
            raise ValueError(
                f"TrainConfig.{name}={getattr(self, name)!r}: must be {rule} (command line: --{name.replace('_', '-')})"
            )

        positive_int = ("batch_size", "epochs", "window")
        optional_positive_int = ("latent_dim", "width", "n_train", "n_test", "image_size")
        for name in positive_int + optional_positive_int:
            v = getattr(self, name)
            if v is None and name in optional_positive_int:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "an integer >= 1" + (" or None" if name in optional_positive_int else ""))
        for name in (
            ("min_epochs", "seed", "lr_drops", "blocks", "kl_warmup")
            + (("n_val",) if self.n_val is not None else ())
            + (("lr_warmup",) if self.lr_warmup is not None else ())
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, "an integer >= 0")
        for name in ("sigma2", "lr") + (("max_minutes",) if self.max_minutes is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad(name, "a finite number > 0")
        if self.net not in NETS:
            bad("net", f"one of {', '.join(NETS)}")
        if self.net != "small" and self.networks is not None:
            bad("net", "'small' with your own `networks` (they replace the built-in families)")
        if self.optimiser not in OPTIMISERS:
            bad("optimiser", f"one of {', '.join(OPTIMISERS)}")
        if self.stopping not in STOPPING:
            bad("stopping", f"one of {', '.join(STOPPING)}")
        if self.switch not in SWITCHES:
            bad("switch", f"one of {', '.join(SWITCHES)}")
        if self.ema is not None and (
            isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 < self.ema < 1
        ):
            bad("ema", "a decay strictly between 0 and 1 (e.g. 0.999), or None for no average")
        for name in ("ema_warmup", "keep_best", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        if self.kl_warmup >= self.epochs:
            bad(
                "kl_warmup",
                f"shorter than the epoch cap (--epochs {self.epochs}), so that the stage can "
                "converge on the ELBO itself",
            )
        if self.blocks and self.networks is not None:
            bad("blocks", "0 with your own `networks` (give their depth in network_args instead)")
        if self.output not in OUTPUTS + (None,):
            bad("output", f"one of {', '.join(OUTPUTS)} (or None: from the data)")
        for name in ("tol",) + (("pixel_floor",) if self.pixel_floor is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                bad(name, "a finite number >= 0")

    def resolved(
        self,
        shape: tuple[int, ...],
        n_train_images: int | None = None,
        *,
        real_valued: bool = False,
        world: int = 1,
    ) -> TrainConfig:
        """Fill ``latent_dim`` and ``width`` from one example's shape (C, H, W) (any shape with
        ``networks``), ``n_val`` from the number of training images (before the ``n_train`` subset),
        ``output`` from whether the data are ``real_valued`` (a table, not images in [0, 1]) and
        ``lr_warmup`` from the family (capped at the steps of ``epochs`` epochs on ``world`` processes)."""
        if real_valued and self.output == "sigmoid":
            raise ValueError(
                "TrainConfig.output='sigmoid' bounds the decoder mean to (0, 1), but the data are a "
                "real-valued table; fix: output='identity' (command line: --output identity) or None"
            )
        output = (self.output or "identity") if real_valued else self.output
        latent = self.latent_dim or default_latent_dim(shape, self.net)
        width = self.width or (default_width(shape, self.net) if self.networks is None else None)
        n_val = self.n_val
        if n_val is None and n_train_images is not None:
            n = min(self.n_train, n_train_images) if self.n_train else n_train_images
            n_val = min(5000, n // 10)
        lr_warmup = self.lr_warmup
        if lr_warmup is None:
            lr_warmup = PAPER_LR_WARMUP if self.net == "paper" else 0
            if lr_warmup and n_train_images is not None and n_val is not None:
                n_fit = (min(self.n_train, n_train_images) if self.n_train else n_train_images) - n_val
                lr_warmup = min(lr_warmup, self.epochs * n_batches_of(n_fit, self.batch_size, world))
        return dataclasses.replace(
            self, latent_dim=latent, width=width, n_val=n_val, output=output, lr_warmup=lr_warmup
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        try:
            return cls(**{**LEGACY, **d})
        except (TypeError, ValueError) as e:  # a hand edit: one clear error, naming the file, for every command
            raise ValueError(
                f"{source}: {e}; fix: undo the edit (a run's config.json must stay as train wrote it)"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no config.json; is this a run folder made by `balanced-vae train`?"
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); the run folder is damaged") from None
        if isinstance(d, dict) and str(d.get("dataset", "")).startswith("folder:") and d.get("image_size") is None:
            d = {**d, "image_size": 64}  # written before folders kept their own size: None meant 64 then
        return cls.from_dict(d, source=str(path))


def n_batches_of(n: int, batch_size: int, world: int) -> int:
    """Steps per epoch: global batches of ``batch_size``; a last batch smaller than the world is dropped."""
    steps = math.ceil(n / batch_size)
    return steps - 1 if world > 1 and 0 < n % batch_size < world else steps


def method_of(method: str | None, variance: str | None) -> str:
    """The method a run trains: ``method``, else ``"fixed"`` for ``variance="fixed"`` and ``"learned"``
    (ours, Algorithm 1) otherwise; a ValueError when both are given and disagree."""
    chosen = method or ("fixed" if variance == "fixed" else "learned")
    if variance and method and chosen != ("fixed" if variance == "fixed" else "learned"):
        raise ValueError(f"--variance {variance} contradicts --method {method}; give one of them")
    return chosen
