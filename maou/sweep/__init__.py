"""The sweep layer: specs, the step planner, the trial recorder, decisions, the protocol loop,
collapse pruning, executors (local, Ray), storages and exports. It drives the trainer core
(:mod:`maou.trainer`) and is the only part of maou-sweep that talks to Optuna and Ray."""
