"""Collapse detectors on synthetic histories, the rules and monitor built from their strict config,
and the Optuna layer (real, in-memory studies). No training here."""

from __future__ import annotations

import math

import optuna
import pytest

from maou.strict import ConfigError, from_dict
from maou.sweep.run.pruning import (
    Armed,
    CollapseMonitor,
    DivergenceDetector,
    LegalMovesCollapseDetector,
    NonFiniteDetector,
    OptunaPrunerConfig,
    PruningConfig,
    UniformPolicyDetector,
    ValueCollapseDetector,
    build_monitor,
    build_optuna_pruner,
    grace_steps,
    pruning_config_from_dict,
)
from maou.trainer.result import Stop

optuna.logging.set_verbosity(optuna.logging.WARNING)

BUDGET = 1000
EVERY = BUDGET // 20  # 20 evaluations: three of them are 15 % of the budget
UNIFORM = math.log(1496)


def stage3(step: int, *, skill: float, std: float, acc: float, label_std: float = 0.45,
           entropy: float = 4.0, ce: float = 4.5, val_loss: float = 5.0) -> tuple[int, dict[str, float]]:
    return step, {
        "train_loss": val_loss, "val_loss": val_loss, "lr": 1e-3,
        "val_policy_top1": 0.2, "val_policy_ce": ce, "val_policy_entropy": entropy,
        "val_value_bce": 0.69 * (1 - skill), "val_value_brier": 0.25 * (1 - skill),
        "val_value_accuracy": acc, "val_value_std": std, "val_value_label_std": label_std,
        "val_value_skill": skill, "val_value_mean": 0.5414,
    }


def stage2(step: int, *, f1: float, pred_rate: float, val_loss: float = 0.2,
           label_rate: float = 0.075, f1_all_pos: float = 0.14) -> tuple[int, dict[str, float]]:
    return step, {
        "train_loss": val_loss, "val_loss": val_loss, "lr": 1e-3, "val_f1": f1,
        "val_precision": f1, "val_recall": f1, "val_pred_pos_rate": pred_rate,
        "val_label_pos_rate": label_rate, "val_f1_all_positive": f1_all_pos,
    }


def armed(detector, patience=3):
    """A detector alone, armed with no grace period (divergence's default patience is 1)."""
    return Armed(detector, 0, patience, trim_history=not detector.whole_history)


def first_hit(checker, history):
    """Feed the history one evaluation at a time, as the trainer does; the first Stop. A bare
    detector is armed with the default patience (3, or divergence's 1)."""
    if not hasattr(checker, "rules") and not isinstance(checker, Armed):
        checker = armed(checker, checker.default_patience or 3)
    for i in range(1, len(history) + 1):
        hit = checker.check(history[:i])
        if hit is not None:
            return hit
    return None


def collapsed_value_history(n: int = 20) -> list:
    return [stage3(EVERY * (i + 1), skill=-0.001, std=0.005, acc=0.5418) for i in range(n)]


# --- value head ---------------------------------------------------------------------------------


def test_collapsed_value_head_is_caught_at_15_percent():
    monitor = build_monitor(3, PruningConfig(), BUDGET)
    hit = first_hit(monitor, collapsed_value_history())
    assert hit is not None and hit.reason == "value_collapse"
    assert hit.step == 3 * EVERY == 150
    assert "0.5418" in hit.detail and "0.0050" in hit.detail and "-0.0010" in hit.detail


def test_value_collapse_straddling_threshold_is_caught_by_spread():
    # Mean prediction near 0.5: accuracy jitters, but the spread stays collapsed.
    history = [stage3(EVERY * (i + 1), skill=-0.002 + 0.001 * (i % 2), std=0.004 + 0.002 * (i % 2),
                      acc=0.49 + 0.03 * (i % 3)) for i in range(20)]
    hit = first_hit(build_monitor(3, PruningConfig(), BUDGET), history)
    assert hit is not None and hit.reason == "value_collapse" and hit.step == 150


def test_value_constant_off_mean_is_caught_by_frozen_accuracy():
    # A constant above 0.5 with some (noisy) spread but no skill and constant accuracy.
    history = [stage3(EVERY * (i + 1), skill=-0.05, std=0.08 + 0.005 * (i % 2), acc=0.5418) for i in range(20)]
    hit = first_hit(build_monitor(3, PruningConfig(), BUDGET), history)
    assert hit is not None and hit.reason == "value_collapse"


def test_slow_but_healthy_value_head_is_never_pruned():
    skills = [0.0, 0.01, 0.03, 0.06, 0.1, 0.14, 0.18, 0.22, 0.25, 0.28] + [0.3] * 10
    history = [stage3(EVERY * (i + 1), skill=s, std=0.01 + 0.02 * i, acc=0.5418 + 0.01 * i)
               for i, s in enumerate(skills)]
    assert first_hit(build_monitor(3, PruningConfig(), BUDGET), history) is None


def test_very_slow_value_head_with_tiny_spread_and_frozen_accuracy_is_not_pruned():
    # Predictions all above 0.5 (accuracy frozen, std tiny) yet skill creeps up 0.003 per evaluation.
    history = [stage3(EVERY * (i + 1), skill=-0.006 + 0.003 * i, std=0.005, acc=0.5418) for i in range(20)]
    assert first_hit(build_monitor(3, PruningConfig(), BUDGET), history) is None


def test_slow_value_head_growing_spread_is_not_pruned():
    # Skill flat at 0 for a while but the spread grows steadily: still learning.
    history = [stage3(EVERY * (i + 1), skill=0.0 if i < 6 else 0.02 * (i - 5), std=0.005 + 0.015 * i,
                      acc=0.5418) for i in range(20)]
    assert first_hit(build_monitor(3, PruningConfig(), BUDGET), history) is None


def test_slow_start_near_initialisation_is_not_pruned():
    # Measured on a 2x16 network at lr 1e-3, batch 64, evaluated every 4 steps: skill ~0 and a tiny
    # but steadily growing spread for the first dozen evaluations (the backbone still near its init).
    stds = [0.013, 0.016, 0.020, 0.026, 0.033, 0.042, 0.051, 0.059, 0.066, 0.071, 0.074, 0.076]
    skills = [-0.002, -0.003, -0.004, -0.005, -0.004, -0.004, -0.002, 0.001, 0.002, 0.001, 0.001, 0.0]
    accs = [0.494, 0.477, 0.480, 0.482, 0.523, 0.508, 0.502, 0.514, 0.510, 0.523, 0.541, 0.541]
    history = [stage3(EVERY * (i + 1), skill=k, std=d, acc=a, label_std=0.5)
               for i, (k, d, a) in enumerate(zip(skills, stds, accs))]
    assert first_hit(build_monitor(3, PruningConfig(), BUDGET), history) is None
    # without the steady-growth rule the same history would be cut at its third evaluation
    strict = ValueCollapseDetector(min_std_growth=10.0)
    assert first_hit(strict, history).step == 3 * EVERY


def test_value_head_at_the_mean_after_a_blow_up_is_caught():
    # Measured (2x32, MSE + SGD lr 2.0, batch 1024, no warmup or clipping; every 10 steps): the
    # network blows up, then settles with the value head at the label mean, accuracy on two values.
    stds = [0.000, 0.000, 0.067, 0.244, 0.125, 0.025, 0.011, 0.009, 0.009, 0.010, 0.010, 0.010]
    skills = [-13664.7, -3538.1, -100.7, -4.84, -0.219, 0.0, -0.0001, -0.0002, 0.0001, 0.0, 0.0, 0.0]
    accs = [0.495, 0.495, 0.497, 0.486, 0.497, 0.495, 0.495, 0.495, 0.495, 0.506, 0.506, 0.495]
    history = [stage3(10 * (i + 1), skill=k, std=d, acc=a, label_std=0.4996)
               for i, (k, d, a) in enumerate(zip(skills, stds, accs))]
    hit = first_hit(ValueCollapseDetector(), history)
    # the first window of three settled evaluations (60-80); the blow-up itself is divergence's job
    assert hit is not None and hit.reason == "value_collapse" and hit.step == 80


def test_saturated_value_head_recovering_from_a_blow_up_is_still_constant():
    # Measured (2x16, MSE + SGD lr 2.0, batch 256, steps 8-28): every prediction 0.000 while the
    # BCE-based skill "improves" from -3.6e5 to -157: the head is a constant, not learning.
    skills = [-359663.2, -1041.7, -247.3, -164.8, -157.4, -165.5]
    history = [stage3(4 * (i + 1), skill=k, std=0.0, acc=0.482, label_std=0.4996) for i, k in enumerate(skills)]
    hit = first_hit(ValueCollapseDetector(), history)
    assert hit is not None and hit.step == 12 and "accuracy 0.4820 unchanged" in hit.detail
    assert first_hit(ValueCollapseDetector(skill_floor=-1e9), history) is None  # counting raw gains


def test_noisy_healthy_value_head_is_never_pruned():
    noise = [0.03, -0.02, 0.01, -0.04, 0.02, 0.0, -0.01, 0.04, -0.03, 0.01] * 2
    history = [stage3(EVERY * (i + 1), skill=0.2 + n, std=0.2 + n, acc=0.66 + n / 4)
               for i, n in enumerate(noise)]
    assert first_hit(build_monitor(3, PruningConfig(), BUDGET), history) is None


def test_value_detector_needs_patience_evaluations_and_tolerates_missing_keys():
    detector = armed(ValueCollapseDetector(), patience=3)
    history = collapsed_value_history(3)
    assert detector.check(history[:2]) is None
    assert detector.check(history) is not None
    # Stage 2 history: no value metrics, no decision.
    assert detector.check([stage2(EVERY * (i + 1), f1=0.0, pred_rate=0.0) for i in range(5)]) is None
    # Only a loss: nothing to say.
    assert detector.check([(s, {"val_loss": 1.0}) for s in (10, 20, 30)]) is None


def test_grace_respected():
    config = from_dict(PruningConfig, {"grace_fraction": 0.3}, "pruning")
    hit = first_hit(build_monitor(3, config, BUDGET), collapsed_value_history())
    # grace = 300 steps: the window is the evaluations at 300, 350, 400.
    assert hit is not None and hit.step == 400
    assert Armed(ValueCollapseDetector(), 300, 3).check(collapsed_value_history(5)) is None


def test_grace_trims_history_for_window_detectors():
    # Two collapsed-looking evaluations before the grace, one after: not enough after grace.
    history = collapsed_value_history(3)
    assert ValueCollapseDetector().check(history, 3) is not None
    assert Armed(ValueCollapseDetector(), 2 * EVERY, 3).check(history) is None
    assert Armed(ValueCollapseDetector(), 2 * EVERY, 3, trim_history=False).check(history) is not None


# --- non-finite, divergence -----------------------------------------------------------------------


def test_nan_is_immediate_even_within_grace():
    monitor = build_monitor(3, PruningConfig(), BUDGET)
    history = [stage3(5, skill=0.0, std=0.1, acc=0.5)]
    history[0][1]["train_loss"] = float("nan")
    hit = monitor.check(history)
    assert hit == Stop("non_finite", "non-finite metrics at step 5: train_loss=nan", 5)
    inf = [(10, {"val_loss": 1.0, "val_f1": float("inf")})]
    assert NonFiniteDetector().check(inf, 1).reason == "non_finite"
    assert NonFiniteDetector(ignore=("val_f1",)).check(inf, 1) is None
    assert NonFiniteDetector().check([(10, {"val_loss": 1.0})], 1) is None


def test_divergence():
    losses = [2.0, 1.2, 0.9, 0.8, 0.85, 1.5, 2.6, 3.5]
    history = [(EVERY * (i + 1), {"val_loss": v, "train_loss": v}) for i, v in enumerate(losses)]
    hit = first_hit(build_monitor(1, PruningConfig(), BUDGET), history)
    assert hit is not None and hit.reason == "divergence" and hit.step == 7 * EVERY
    assert "2.6 > 3 x best 0.8" in hit.detail
    # A noisy but healthy loss, and a tiny loss wiggling by tiny amounts, are left alone.
    noisy = [(EVERY * (i + 1), {"val_loss": 1.0 + 0.3 * ((-1) ** i)}) for i in range(20)]
    assert first_hit(DivergenceDetector(), noisy) is None
    tiny = [(EVERY * (i + 1), {"val_loss": v}) for i, v in enumerate([0.01, 0.002, 0.009, 0.02])]
    assert first_hit(DivergenceDetector(), tiny) is None
    # Patience 2 needs two consecutive evaluations above the limit.
    assert DivergenceDetector().check(history[:7], 2) is None
    assert DivergenceDetector().check(history, 2).step == 8 * EVERY


def test_divergence_counts_best_loss_from_before_the_grace():
    history = [(10, {"val_loss": 0.5}), (20, {"val_loss": 4.0}), (60, {"val_loss": 4.1})]
    monitor = build_monitor(2, PruningConfig(), BUDGET)  # grace 50 steps
    assert monitor.check(history[:2]) is None
    assert monitor.check(history).reason == "divergence"


# --- stage 2 --------------------------------------------------------------------------------------


def test_stage2_all_negative_head_is_caught():
    history = [stage2(EVERY * (i + 1), f1=0.0, pred_rate=0.0, val_loss=0.25) for i in range(20)]
    hit = first_hit(build_monitor(2, PruningConfig(), BUDGET), history)
    assert hit is not None and hit.reason == "legal_moves_collapse" and hit.step == 150
    assert "predicted-positive rate 0" in hit.detail and "0.1400" in hit.detail


def test_stage2_all_positive_head_is_caught():
    history = [stage2(EVERY * (i + 1), f1=0.14, pred_rate=1.0, val_loss=0.7) for i in range(20)]
    hit = first_hit(build_monitor(2, PruningConfig(), BUDGET), history)
    assert hit is not None and hit.reason == "legal_moves_collapse"


def test_stage2_learning_heads_are_not_pruned():
    # All-negative phase while the loss keeps falling, then F1 takes off.
    f1 = [0.0] * 5 + [0.1, 0.3, 0.5, 0.7, 0.8] + [0.9] * 10
    loss = [0.5 * 0.9 ** i for i in range(20)]
    history = [stage2(EVERY * (i + 1), f1=f, pred_rate=0.0 if f == 0 else 0.07, val_loss=v)
               for i, (f, v) in enumerate(zip(f1, loss))]
    assert first_hit(build_monitor(2, PruningConfig(), BUDGET), history) is None
    good = [stage2(EVERY * (i + 1), f1=0.95, pred_rate=0.075) for i in range(20)]
    assert first_hit(build_monitor(2, PruningConfig(), BUDGET), good) is None


def test_stage2_detector_ignores_other_stages():
    assert first_hit(LegalMovesCollapseDetector(), collapsed_value_history()) is None


# --- stage 3 policy -------------------------------------------------------------------------------


def test_uniform_policy_is_caught():
    history = [stage3(EVERY * (i + 1), skill=0.2, std=0.2, acc=0.7, entropy=UNIFORM - 0.001, ce=7.4)
               for i in range(20)]
    hit = first_hit(build_monitor(3, PruningConfig(), BUDGET), history)
    assert hit is not None and hit.reason == "uniform_policy" and hit.step == 150
    assert "7.3" in hit.detail


def test_policy_leaving_uniform_slowly_is_not_pruned():
    history = [stage3(EVERY * (i + 1), skill=0.2, std=0.2, acc=0.7, entropy=UNIFORM - 0.01 * i, ce=7.4 - 0.01 * i)
               for i in range(20)]
    assert first_hit(UniformPolicyDetector(), history) is None
    assert first_hit(UniformPolicyDetector(), [stage2(10 * i, f1=0.5, pred_rate=0.07) for i in range(5)]) is None


# --- combinators, monitor, parameters ------------------------------------------------------------


def test_monitor_returns_the_first_hit_in_order():
    history = collapsed_value_history(3)
    history[-1][1]["val_loss"] = float("inf")
    both = CollapseMonitor([armed(ValueCollapseDetector()), armed(NonFiniteDetector())])
    assert both.check(history).reason == "value_collapse"
    assert CollapseMonitor([armed(NonFiniteDetector()), armed(ValueCollapseDetector())]).check(history).reason \
        == "non_finite"
    assert CollapseMonitor([]).check(history) is None


def test_build_monitor_picks_detectors_per_stage():
    def kinds(stage, config=PruningConfig()):
        monitor = build_monitor(stage, config, BUDGET)
        return [type(rule.detector).__name__ for rule in monitor.rules]

    assert kinds(1) == ["NonFiniteDetector", "DivergenceDetector"]
    assert kinds(2) == ["NonFiniteDetector", "DivergenceDetector", "LegalMovesCollapseDetector"]
    assert kinds(3) == ["NonFiniteDetector", "DivergenceDetector", "ValueCollapseDetector",
                        "UniformPolicyDetector"]
    off = pruning_config_from_dict({"value": {"enabled": False}, "divergence": {"enabled": False}})
    assert kinds(3, off) == ["NonFiniteDetector", "UniformPolicyDetector"]
    assert kinds(3, pruning_config_from_dict({"enabled": False})) == []
    monitor = build_monitor(3, PruningConfig(), BUDGET)
    assert isinstance(monitor, CollapseMonitor) and monitor.max_steps == BUDGET and monitor.stage == 3
    assert [rule.min_step for rule in monitor.rules[1:]] == [50, 50, 50]
    assert grace_steps(0.05, 200) == 10 and grace_steps(0.05, 10) == 0


def test_per_detector_overrides():
    config = pruning_config_from_dict({"patience": 4, "value": {"patience": 2, "grace_fraction": 0.0},
                                       "uniform_policy": {"grace_fraction": 0.2}})
    monitor = build_monitor(3, config, BUDGET)
    _, divergence, value, policy = monitor.rules
    assert divergence.patience == 1 and divergence.min_step == 50
    assert value.patience == 2 and value.min_step == 0
    assert policy.patience == 4 and policy.min_step == 200
    # a detector's own default patience (divergence: 1) yields to the rule's
    explicit = build_monitor(3, pruning_config_from_dict({"divergence": {"patience": 2}}), BUDGET)
    assert explicit.rules[1].patience == 2
    assert first_hit(monitor, collapsed_value_history()).step == 2 * EVERY


@pytest.mark.parametrize("make, message", [
    (lambda: Armed(ValueCollapseDetector(), patience=0), "patience must be an integer >= 1, got 0"),
    (lambda: ValueCollapseDetector(std_ratio=0.0), "std_ratio must be in (0, 1], got 0.0"),
    (lambda: ValueCollapseDetector(skill_floor=0.5), "skill_floor must be < max_skill (0.01), got 0.5"),
    (lambda: ValueCollapseDetector(min_std_growth=0.0), "min_std_growth must be > 0, got 0.0"),
    (lambda: DivergenceDetector(factor=0.5), "factor must be > 1, got 0.5"),
    (lambda: LegalMovesCollapseDetector(min_pred_pos_rate=2.0), "min_pred_pos_rate must be in [0, 1), got 2.0"),
    (lambda: UniformPolicyDetector(tolerance=-1.0), "tolerance must be > 0, got -1.0"),
    (lambda: Armed(NonFiniteDetector(), -5), "min_step must be an integer >= 0, got -5"),
    (lambda: build_monitor(4, PruningConfig(), 100), "stage must be 1, 2 or 3, got 4"),
    (lambda: build_monitor(3, PruningConfig(), 0), "max_steps must be an integer >= 1, got 0"),
])
def test_bad_detector_parameters_name_the_value(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_a_rule_needing_a_metric_its_stage_does_not_report_is_refused():
    # divergence on the training loss works for every stage; a stage that did not report the
    # metric a rule reads would silently switch that rule off, so building the monitor fails
    assert build_monitor(1, pruning_config_from_dict({"divergence": {"metric": "train_loss"}}), BUDGET)
    import dataclasses

    from maou.stages import stage

    renamed = dataclasses.replace(stage(3), metrics=tuple(m.replace("val_value_skill", "val_value_skil")
                                                           for m in stage(3).metrics))
    with pytest.raises(ValueError, match="pruning.value needs val_value_skill, which stage 3"):
        build_monitor(renamed, PruningConfig(), BUDGET)


# --- config ---------------------------------------------------------------------------------------


def test_config_defaults_and_strict_loading():
    config = from_dict(PruningConfig, {"patience": 2, "value": {"std_ratio": 0.05},
                                       "optuna": {"kind": "median", "n_startup_trials": 3}}, "pruning")
    assert config.patience == 2 and config.value.detector.std_ratio == 0.05
    assert config.value.detector.max_skill == 0.01
    assert config.optuna.kind == "median" and config.optuna.n_startup_trials == 3
    assert from_dict(PruningConfig, None, "pruning") == PruningConfig()
    assert from_dict(PruningConfig, {"optuna": {"max_resource": 20}}).optuna.max_resource == 20


@pytest.mark.parametrize("data, message", [
    ({"value": {"std_ratoi": 0.1}}, "pruning.value.std_ratoi: unknown key"),
    ({"bogus": 1}, "pruning.bogus: unknown key"),
    ({"patience": 0}, "pruning.patience: must be >= 1 (got 0)"),
    ({"grace_fraction": 1.5}, "pruning.grace_fraction: must be in [0, 1) (got 1.5)"),
    ({"value": {"patience": 0}}, "pruning.value.patience: must be >= 1 or null (inherit) (got 0)"),
    ({"divergence": {"factor": 1.0}}, "pruning.divergence.factor: must be > 1 (got 1.0)"),
    ({"divergence": {"metric": "val_f1"}}, "pruning.divergence.metric: must be one of"),
    ({"legal_moves": {"min_pred_pos_rate": True}}, "pruning.legal_moves.min_pred_pos_rate: expected a number"),
    ({"optuna": {"kind": "asha"}}, "pruning.optuna.kind: must be one of 'none', 'median'"),
    ({"optuna": {"percentile": 150}}, "pruning.optuna.percentile: must be in [0, 100] (got 150.0)"),
    ({"optuna": {"reduction_factor": 1}}, "pruning.optuna.reduction_factor: must be >= 2 (got 1)"),
    ({"optuna": {"max_resource": "big"}}, "pruning.optuna.max_resource: expected int or 'auto', got 'big'"),
    ({"enabled": "yes"}, "pruning.enabled: expected true or false"),
])
def test_config_errors_name_the_path_and_value(data, message):
    with pytest.raises(ConfigError) as err:
        pruning_config_from_dict(data)
    assert str(err.value).startswith(message), str(err.value)


# --- the Optuna layer -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, cls", [
    ("none", optuna.pruners.NopPruner), ("median", optuna.pruners.MedianPruner),
    ("percentile", optuna.pruners.PercentilePruner), ("hyperband", optuna.pruners.HyperbandPruner),
    ("patient", optuna.pruners.PatientPruner),
])
def test_build_optuna_pruner_kinds(kind, cls):
    pruner = build_optuna_pruner(OptunaPrunerConfig(kind=kind))
    assert isinstance(pruner, cls)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    trial.report(0.5, 1)
    assert not trial.should_prune()
    study.tell(trial, 0.5)


def _report(study, values):
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step * EVERY)
    return trial


def test_median_pruner_on_a_real_study():
    study = optuna.create_study(direction="maximize", pruner=build_optuna_pruner(
        OptunaPrunerConfig(kind="median", n_startup_trials=2, n_warmup_steps=EVERY)))
    for good in ([0.5, 0.7, 0.8], [0.4, 0.6, 0.9]):
        study.tell(_report(study, good), good[-1])
    bad = _report(study, [0.1])  # step 0: still in warmup
    assert not bad.should_prune()
    bad.report(0.1, EVERY)
    assert bad.should_prune()
    study.tell(bad, state=optuna.trial.TrialState.PRUNED)
    fine = _report(study, [0.6, 0.75])
    assert not fine.should_prune()


@pytest.mark.parametrize("kind", ["median", "patient"])
def test_patient_pruner_waits_for_stagnation(kind):
    study = optuna.create_study(direction="maximize", pruner=build_optuna_pruner(
        OptunaPrunerConfig(kind=kind, patience=2, n_startup_trials=1)))
    study.tell(_report(study, [0.5, 0.7, 0.8, 0.9, 0.95]), 0.95)
    improving = _report(study, [0.1, 0.2, 0.3, 0.4])  # below the median but still improving
    assert improving.should_prune() == (kind == "median")
    stalled = _report(study, [0.1, 0.2, 0.15, 0.15, 0.15])
    assert stalled.should_prune()


def test_end_to_end_collapsed_trial_is_pruned_with_its_reason():
    config = pruning_config_from_dict({"optuna": {"kind": "median"}})
    study = optuna.create_study(direction="maximize", pruner=build_optuna_pruner(config.optuna))
    histories = {0: [stage3(EVERY * (i + 1), skill=0.02 * i, std=0.02 * (i + 1), acc=0.55 + 0.01 * i)
                     for i in range(20)],
                 1: collapsed_value_history()}

    def objective(trial: optuna.Trial) -> float:
        monitor = build_monitor(3, config, BUDGET)
        seen = []
        for step, metrics in histories[trial.number]:
            seen.append((step, metrics))
            trial.report(metrics["val_value_skill"], step)
            collapse = monitor.check(seen)
            if collapse is not None:
                trial.set_user_attr("prune_reason", collapse.reason)
                trial.set_user_attr("prune_step", collapse.step)
                trial.set_user_attr("prune_detail", collapse.detail)
                raise optuna.TrialPruned(collapse.detail)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return seen[-1][1]["val_value_skill"]

    study.optimize(objective, n_trials=2)
    healthy, collapsed = study.trials
    assert healthy.state == optuna.trial.TrialState.COMPLETE and "prune_reason" not in healthy.user_attrs
    assert collapsed.state == optuna.trial.TrialState.PRUNED
    assert collapsed.user_attrs["prune_reason"] == "value_collapse"
    assert collapsed.user_attrs["prune_step"] == 150
    assert "0.5418" in collapsed.user_attrs["prune_detail"]
    assert max(collapsed.intermediate_values) == 150


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, maou.sweep.run.pruning; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
