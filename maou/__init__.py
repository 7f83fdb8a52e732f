"""maou-sweep: hyperparameter sweeps for a staged shogi trainer.

Heavy dependencies (torch, optuna, ray) are imported lazily by the modules that need them,
so importing :mod:`maou` and running ``sweep --help`` stays instant.
"""

__version__ = "0.1.0"
