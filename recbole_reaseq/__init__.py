"""recbole_reaseq: ReaSeq (reasoning-enhanced sequential modelling) on RecBole 1.2.1."""
from recbole_reaseq import compat  # noqa: F401  (must run before anything imports recbole)

__version__ = "0.1.0"
