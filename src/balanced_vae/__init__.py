"""balanced-vae: VAEs that balance their own ELBO (Lin, Roberts, Trigoni, Clark 2019)."""
__version__ = "0.1.0"
