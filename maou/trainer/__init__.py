"""The staged trainer core: training config, datasets as tensors, models, losses, metrics, the loop.

Importable and testable on its own: nothing here imports Optuna or Ray. A run reports its metrics
through a callback (:data:`maou.trainer.result.Report`) and hands back a
:class:`~maou.trainer.result.TrainResult`; the sweep layer adapts both to Optuna and Ray.
"""
