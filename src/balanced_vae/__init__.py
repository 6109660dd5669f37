"""balanced-vae: VAEs that balance their own ELBO (Lin, Roberts, Trigoni, Clark 2019)."""

from .version import __version__  # noqa: F401

__all__ = ["BalancedVAE"]


def __getattr__(name: str):
    """``balanced_vae.BalancedVAE`` (the scikit-learn estimator), imported on first use so that
    ``import balanced_vae`` stays light."""
    if name == "BalancedVAE":
        from .estimator import BalancedVAE

        return BalancedVAE
    raise AttributeError(f"module 'balanced_vae' has no attribute {name!r}")
