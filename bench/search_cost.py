"""Racing's search cost: does each step decide like the exhaustive grid, and for how much less compute?

    PYTHONPATH=. .venv/bin/python bench/search_cost.py --live both       # the demo and the CPU Stage 3 grid
    PYTHONPATH=. .venv/bin/python bench/search_cost.py --replay sqlite:///results/search-cost/demo/off.db
    PYTHONPATH=. .venv/bin/python bench/search_cost.py --quick           # a tiny Stage 1 version (the test)

**Replay** (``--replay URL ...``): a storage recorded with racing off (every trial ran to its end, its
objective recorded at every evaluation) is replayed step by step under the racing schedule with the
real rule (:class:`maou.sweep.run.racing.Racer`), in the plan's order (the carried configuration,
then each challenger): by default a configuration's seeds side by side (as trials at once train
them: their evaluations in order of their share of the budget; once raced, every seed stops at its
next evaluation), with ``--one-at-a-time`` one trial after another (a challenger's trial walks its
recorded evaluations and stops where the racer stops it, its later seeds skipped); a recorded
prune (collapse) puts its configuration out as live; the carried configuration never stops; trials
the step copied from an earlier one are known before anything trains and cost nothing, as live.
Per step: the compute fraction (samples trained under racing /
samples trained exhaustively, ``steps_done x batch_size`` per trial: a stopped trial trains up to
its stop, a skipped one nothing), and the decision under racing (:func:`decide` on the stats where
raced configurations are pruned, so at p = 1 in Holm's count) against the recorded exhaustive one
(winner and adopted flag). What-ifs: every configuration whose seeds all completed taken in turn as
the carried one, its racing decision against the exhaustive decision with that carried
configuration. The selection rule (sigmas, margin, guards) is read from the recorded decision's
rule; the recorded decision is recomputed from its trials first, and a step it does not reproduce
is flagged. Sweeps are found from the studies' names (``<sweep>/NN-step``); steps recorded with
racing on are not exhaustive and are skipped with a note.

**Live** (``--live demo|stage3|both``): the same sweep on the same seeds, run here in this process
with racing off and on (its defaults), then (Stage 3) with ``racing.max_seeds`` raised (adaptive
seeds). Per step: the decisions (winner, adopted) of both runs, trainings and samples trained (from
the records), the whole runs' wall time and the ratios; then the replay of the exhaustive run's
storage. Specs: ``sweeps/demo.yaml`` and ``bench/specs/stage3-grid-cpu.yaml`` (the Stage 3 lr x
batch x optimizer grid sized for a CPU), copied into ``--workdir`` with their own storages, runs and
one datasets folder both runs share. The targets (issue "Racing: each step decides like the
exhaustive grid, for far less compute"): the same decisions; at most 50 % of the Stage 3 grid's
samples and 85 % of the demo's trial-steps; the adaptive run decides where the fixed-seed one cannot,
for no more samples than the exhaustive fixed-seed run. Exit status 1 when a target is missed.

With ``s`` seeds and racing from ``f`` of the budget, one at a time a challenger's first seed always
runs whole (one seed measures no noise) and its second runs at least to ``f``: a step trains at
least ``1/s + (1 - 1/s) f`` of its challengers' samples (2 seeds, f = 1/3: 67 %); side by side,
every seed to ``f`` at least. The table prints that floor. The live runs' replay uses the schedule
their executor ran (side by side when it runs at least as many trials at once as seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from optuna.trial import TrialState  # noqa: E402

from maou.sweep.identity import ConfigKey  # noqa: E402
from maou.sweep.records import RecordedDecision, StepRecord, TrialRecord, deciding_trials  # noqa: E402
from maou.sweep.run.decision import StepDecision, collect_stats, decide  # noqa: E402
from maou.sweep.run.racing import RACING, Racer  # noqa: E402
from maou.sweep.spec import Guard, Objective, Racing, Selection  # noqa: E402

#: A step study's name: ``<sweep>/<NN>-<step>``.
STUDY = re.compile(r"^(?P<sweep>.+)/(?P<index>\d{2,})-(?P<step>[^/]+)$")
STAGE3_SPEC = REPO / "bench" / "specs" / "stage3-grid-cpu.yaml"
DEMO_SPEC = REPO / "sweeps" / "demo.yaml"
#: The issue's targets: the largest share of the exhaustive compute racing may train.
TARGETS = {"demo": ("trial-steps", 0.85), "stage3": ("samples", 0.50)}


# ------------------------------------------------------------------------------------------ replay
@dataclass(frozen=True)
class Rule:
    """How a recorded step decided: its objective, selection and guards."""

    objective: Objective
    selection: Selection
    guards: tuple[Guard, ...] = ()


def rule_of(step: StepRecord) -> Rule:
    """The rule of a decided step, read from its recorded decision (the rule text names the sigmas,
    the margin and the guards) and its trials (the objective's reduce)."""
    decision = step.decision
    assert decision is not None
    trials = [t for t in step.trials if t.metric]
    metric = decision.metric or (trials[0].metric if trials else None)
    direction = decision.direction or (trials[0].direction if trials else None)
    if metric is None or direction not in ("maximize", "minimize"):
        raise ValueError(f"{step.study_name}: the decision names no objective")
    reduce = trials[0].reduce if trials else "final"
    sigmas = re.search(r"\(([-+.\deE]+) sigma\)", decision.rule)
    margin = re.search(r"gain above ([-+.\deE]+)", decision.rule)
    guards: list[Guard] = []
    listed = re.search(r"; guards: (.*?)(?:; with one seed|$)", decision.rule)
    if listed:
        for metric_name, tolerance in re.findall(r"(\S+) may not get worse by more than ([-+.\deE]+)", listed.group(1)):
            guards.append(Guard(metric_name, float(tolerance)).resolved())
    return Rule(Objective(metric, "maximize" if direction == "maximize" else "minimize",
                          "best" if reduce == "best" else "final"),
                Selection(float(sigmas.group(1)) if sigmas else 1.0, float(margin.group(1)) if margin else 0.0),
                tuple(guards))


def _batch(t: TrialRecord) -> int:
    return int(t.config.get("batch_size") or 1)


def _outcome(decision: StepDecision | RecordedDecision) -> tuple[ConfigKey, bool]:
    return decision.winner_key, decision.adopted


@dataclass
class Race:
    """One step replayed under racing with one carried configuration."""

    carried: ConfigKey
    #: The decision with every trial run to its end.
    exhaustive: StepDecision
    #: The decision with the raced configurations pruned (p = 1 in Holm's count).
    racing: StepDecision
    samples_exhaustive: int = 0
    samples_racing: int = 0
    steps_exhaustive: int = 0
    steps_racing: int = 0
    trainings_exhaustive: int = 0
    trainings_racing: int = 0
    #: (configuration, seed, step, max_steps) where the racer stopped a running trial
    stops: list[tuple[ConfigKey, int, int, int]] = field(default_factory=list)
    #: (configuration, seed) never started: its configuration was raced out before
    skipped: list[tuple[ConfigKey, int]] = field(default_factory=list)
    #: The least share of the exhaustive samples racing could train (every challenger stopped at its first chance).
    floor: float | None = None
    #: (trainings, samples) racing ran, one at a time, for configurations that could no longer win: an
    #: earlier seed of theirs failed (racing puts a configuration out on a pruned seed, not a failed one).
    after_pruned: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def fraction(self) -> float | None:
        return self.samples_racing / self.samples_exhaustive if self.samples_exhaustive else None

    @property
    def steps_fraction(self) -> float | None:
        return self.steps_racing / self.steps_exhaustive if self.steps_exhaustive else None

    @property
    def unchanged(self) -> bool:
        return _outcome(self.racing) == _outcome(self.exhaustive)

    @property
    def raced(self) -> list[ConfigKey]:
        return sorted({k for k, *_ in self.stops} | {k for k, _ in self.skipped})


def _walk(racer: Racer, t: TrialRecord) -> int | None:
    """Feed the racer ``t``'s recorded evaluations in order, as the recorder does live; the step
    the racer stops it at, or None when it runs to its end."""
    if not t.max_steps:
        return None
    for step, value in sorted(t.intermediate_values.items()):
        if step <= 0:
            continue
        racer.record(t.key, t.seed, step, t.max_steps, value)
        stop = racer.check(t.key, step, t.max_steps)
        if stop is not None:
            return int(stop.step)
    return None


def _first_chance(t: TrialRecord, racing: Racing) -> int:
    """The first evaluation at which racing may stop ``t`` (its whole run when none is)."""
    steps = t.steps_done or 0
    if not t.max_steps:
        return steps
    chances = [s for s in t.intermediate_values if s / t.max_steps >= racing.start_fraction - 1e-9]
    return min(min(chances, default=steps), steps)


def _walk_together(racer: Racer, trials: list[TrialRecord]) -> dict[tuple[ConfigKey, int], int | None]:
    """Feed the racer the recorded evaluations of one configuration's seeds trained side by side
    (trials at once, ``k >= seeds``): every evaluation in the order of its share of the budget. Once
    the configuration is raced, each other seed stops at its next evaluation (the racer's answer to
    its next report). Per trial: the step it stops at, or None when it runs to its end."""
    events = sorted((step / t.max_steps, t.seed, step, t) for t in trials if t.max_steps
                    for step in t.intermediate_values if step > 0)
    stopped: dict[tuple[ConfigKey, int], int | None] = {t.pair: None for t in trials}
    for t in trials:  # pruned before its first evaluation
        if not any(step > 0 for step in t.intermediate_values):
            _ended(racer, t)
    raced = any(t.key in racer.raced for t in trials)
    done: set[tuple[ConfigKey, int]] = set()
    for _, _, step, t in events:
        if t.pair in done:
            continue
        if not raced:
            racer.record(t.key, t.seed, step, t.max_steps or 0, t.intermediate_values[step])
            raced = racer.check(t.key, step, t.max_steps or 0) is not None
            if not raced:
                if step == max(t.intermediate_values):  # its recorded end: pruned, the others stop
                    _ended(racer, t)
                    raced = t.key in racer.raced
                continue
        if step < (t.steps_done or 0):
            stopped[t.pair] = step
        done.add(t.pair)
    return stopped


def _ended(racer: Racer, t: TrialRecord) -> None:
    """``t`` ran to its recorded end: pruned there (collapsed, NaN loss), its configuration is out,
    as the recorder tells the racer live."""
    if t.state == TrialState.PRUNED and t.prune_reason != RACING:
        racer.pruned(t.key, t.seed, t.prune_reason or "pruned", t.prune_step)


def replay_race(trials: Iterable[TrialRecord], carried: ConfigKey, rule: Rule, racing: Racing,
                copies: Iterable[tuple[ConfigKey, int]] = (), together: bool = True) -> Race:
    """The step of exhaustive ``trials`` as racing would have run it with ``carried`` as the carried
    configuration. ``copies``: (configuration, seed) pairs copied from an earlier step (known before
    anything trains, never raced, no compute). ``together``: each configuration's seeds train side by
    side (trials at once, at least as many as the seeds); else one trial at a time, in the plan's
    order (each configuration's seeds in turn: a seed not started when its configuration is raced
    is skipped)."""
    objective = rule.objective
    sign = 1.0 if objective.direction == "maximize" else -1.0
    deciding = deciding_trials(trials)
    copied = set(copies)
    racer = Racer.of_trials(racing, carried, sign, [t for t in deciding if t.pair in copied])
    by_pair = {t.pair: t for t in deciding}
    first_seen = list(dict.fromkeys(t.key for t in deciding))  # the plan's order: trial numbers
    order = [carried, *(k for k in first_seen if k != carried)]
    seeds = sorted({t.seed for t in deciding})
    replayed: list[TrialRecord] = []
    race = Race(carried, decide({}, carried, objective, rule.selection), decide({}, carried, objective, rule.selection))
    floor_samples = challenger_samples = 0
    ineligible: set[ConfigKey] = set()
    for key in order:  # the plan's order: the carried configuration, then each challenger's seeds
        group = [t for seed in seeds if (t := by_pair.get((key, seed))) is not None]
        for t in group:
            if t.pair in copied:
                replayed.append(t)
        group = [t for t in group if t.pair not in copied]
        stops = _walk_together(racer, group) if together else {}
        for rank, t in enumerate(group):
            seed = t.seed
            batch, steps = _batch(t), t.steps_done or 0
            race.trainings_exhaustive += 1
            race.steps_exhaustive += steps
            race.samples_exhaustive += steps * batch
            if key != carried:
                challenger_samples += steps * batch
                if together:  # every seed to the first chance (one seed alone measures no noise: whole)
                    floor_samples += (_first_chance(t, racing) if len(group) > 1 else steps) * batch
                else:  # the first seed whole, the second to its first chance, the later ones not started
                    floor_samples += (steps if rank == 0 else _first_chance(t, racing) if rank == 1 else 0) * batch
            skip = racer.skip_detail(key) if not together else None
            if skip is not None:
                race.skipped.append(t.pair)
                replayed.append(dataclasses.replace(t, state=TrialState.PRUNED, value=None, prune_reason=RACING,
                                                   prune_detail=skip, prune_step=0, steps_done=0))
                continue
            race.trainings_racing += 1
            stop = stops.get(t.pair) if together else _walk(racer, t)
            if stop is None and not together:
                _ended(racer, t)
            trained = steps if stop is None else stop
            if key in ineligible and not together:  # side by side, a sibling trains alongside, not after
                race.after_pruned[0] += 1
                race.after_pruned[1] += trained * batch
            if stop is None:
                race.steps_racing += steps
                race.samples_racing += steps * batch
                replayed.append(t)
                if key != carried and t.state != TrialState.COMPLETE:  # collapsed or failed: it can never win
                    ineligible.add(key)
                continue
            race.stops.append((key, seed, stop, t.max_steps or 0))
            race.steps_racing += stop
            race.samples_racing += stop * batch
            replayed.append(dataclasses.replace(t, state=TrialState.PRUNED, value=None, prune_reason=RACING,
                                               prune_detail=racer.raced.get(key, RACING), prune_step=stop,
                                               steps_done=stop))
    carried_samples = race.samples_exhaustive - challenger_samples
    if race.samples_exhaustive:
        race.floor = (carried_samples + floor_samples) / race.samples_exhaustive
    guards = [g.metric for g in rule.guards]
    race.exhaustive = decide(collect_stats(deciding, objective.reduce, guards), carried, objective, rule.selection,
                             rule.guards)
    race.racing = decide(collect_stats(replayed, objective.reduce, guards), carried, objective, rule.selection,
                         rule.guards)
    return race


@dataclass
class StepReplay:
    """One recorded step replayed: with its own carried configuration, and with every other one."""

    storage: str
    sweep: str
    study: str
    index: int
    name: str
    configurations: int = 0
    recorded: RecordedDecision | None = None
    main: Race | None = None
    whatifs: list[Race] = field(default_factory=list)
    #: Why the step was not replayed, or what is odd about it.
    note: str = ""

    @property
    def unchanged(self) -> bool | None:
        """The racing decision is the recorded one (None: not replayed)."""
        if self.main is None or self.recorded is None:
            return None
        return _outcome(self.main.racing) == _outcome(self.recorded)

    @property
    def reproduced(self) -> bool | None:
        """The recorded decision is the one its trials give (None: not replayed)."""
        if self.main is None or self.recorded is None:
            return None
        return _outcome(self.main.exhaustive) == _outcome(self.recorded)


def replay_step(step: StepRecord, racing: Racing, storage: str = "", sweep: str = "",
                what_ifs: bool = True, together: bool = True) -> StepReplay:
    """Replay one recorded step (see the module docstring)."""
    out = StepReplay(storage, sweep, step.study_name, step.index, step.name, recorded=step.decision)
    deciding = deciding_trials(step.trials)
    out.configurations = len({t.key for t in deciding})
    if step.decision is None:
        out.note = "not decided (no decision recorded)"
        return out
    raced = [t for t in deciding if t.prune_reason == RACING]
    if raced:
        out.note = f"not exhaustive: {len(raced)} trials raced (recorded with racing on)"
        return out
    if step.decision.attrs.get("seeds_added"):
        out.note = "adaptive seeds added seeds (the replay races every recorded seed)"
    try:
        rule = rule_of(step)
    except ValueError as exc:
        out.note = str(exc)
        return out
    carried = step.decision.carried_key
    copies = {t.pair for t in deciding if t.reused}
    out.main = replay_race(deciding, carried, rule, racing, copies, together)
    if not out.reproduced:
        out.note = (f"the recorded decision ({_describe(step.decision)}) is not what its trials give "
                    f"({_describe(out.main.exhaustive)})" + (f"; {out.note}" if out.note else ""))
    if what_ifs:
        for stats in sorted(out.main.exhaustive.stats, key=lambda s: s.key.text):
            key = stats.key
            if not stats.eligible:
                continue
            if key == carried:
                out.whatifs.append(out.main)
                continue
            # with another carried configuration, the recorded carried one's copies train like any challenger
            others = {p for p in copies if p[0] != carried}
            out.whatifs.append(replay_race(deciding, key, rule, racing, others, together))
    return out


def sweeps_in(storage: Any) -> dict[str, list[tuple[int, str, str]]]:
    """Sweep name -> its step studies as (index, step name, study name), in order."""
    import optuna

    found: dict[str, list[tuple[int, str, str]]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        match = STUDY.match(summary.study_name)
        if match:
            found.setdefault(match["sweep"], []).append((int(match["index"]) - 1, match["step"], summary.study_name))
    return {name: sorted(steps) for name, steps in sorted(found.items())}


def replay_storage(url: str, racing: Racing | None = None, storage: Any = None,
                   what_ifs: bool = True, together: bool = True) -> list[StepReplay]:
    """Every step of every sweep recorded in the storage at ``url`` (or ``storage``), replayed."""
    import optuna

    from maou.sweep.records import RecordError, read_step
    from maou.sweep.storage import mask_url, open_storage

    racing = racing or Racing()
    storage = storage if storage is not None else open_storage(url, create=False)
    out = []
    for sweep, steps in sweeps_in(storage).items():
        for index, name, study_name in steps:
            try:
                record = read_step(optuna.load_study(study_name=study_name, storage=storage), index, name)
            except RecordError as exc:  # another tool's study, or an older record
                out.append(StepReplay(mask_url(url), sweep, study_name, index, name, note=f"not readable: {exc}"))
                continue
            out.append(replay_step(record, racing, mask_url(url), sweep, what_ifs, together))
    return out


# ------------------------------------------------------------------------------------------ printing
def _describe(decision: StepDecision | RecordedDecision) -> str:
    return f"adopted {decision.winner_key.label()}" if decision.adopted else f"kept {decision.carried_key.label()}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _racing_text(racing: Racing) -> str:
    return f"racing from {racing.start_fraction:.0%} of the budget at {racing.sigmas:g} sigma"


def print_replay(replays: Sequence[StepReplay], racing: Racing, out: Any = None) -> None:
    """The replay tables, one per storage and sweep."""
    out = out or sys.stdout
    groups: dict[tuple[str, str], list[StepReplay]] = {}
    for r in replays:
        groups.setdefault((r.storage, r.sweep), []).append(r)
    for (storage, sweep), steps in groups.items():
        print(f"\nreplay of sweep {sweep!r} in {storage} ({_racing_text(racing)})", file=out)
        print(f"  {'step':<22} {'configs':>7} {'trainings':>11} {'samples exh.':>13} {'compute':>8} {'floor':>6} "
              f"{'decision':>9} {'what-ifs':>9} {'what-if':>8}", file=out)
        print(f"  {'':<22} {'':>7} {'exh.->race':>11} {'':>13} {'fraction':>8} {'':>6} {'unchanged':>9} "
              f"{'unchanged':>9} {'compute':>8}", file=out)
        totals = [0, 0, 0, 0, 0, 0]  # trainings, samples, steps: exhaustive, racing
        decided = unchanged = whatif_n = whatif_ok = 0
        whatif_samples = [0, 0]  # exhaustive, racing: over every what-if of every step
        for r in steps:
            label = f"{r.index + 1:02d}-{r.name}"
            if r.main is None:
                print(f"  {label:<22} {r.configurations:>7}  {r.note}", file=out)
                continue
            m = r.main
            totals = [a + b for a, b in zip(totals, (m.trainings_exhaustive, m.trainings_racing, m.samples_exhaustive,
                                                     m.samples_racing, m.steps_exhaustive, m.steps_racing),
                                            strict=True)]
            decided += 1
            unchanged += bool(r.unchanged)
            ok = sum(w.unchanged for w in r.whatifs)
            whatif_n += len(r.whatifs)
            whatif_ok += ok
            for w in r.whatifs:
                whatif_samples[0] += w.samples_exhaustive
                whatif_samples[1] += w.samples_racing
            fractions = [w.fraction for w in r.whatifs if w.fraction is not None]
            mean = sum(fractions) / len(fractions) if fractions else None
            trainings = f"{m.trainings_exhaustive}->{m.trainings_racing}"
            print(f"  {label:<22} {r.configurations:>7} {trainings:>11} {m.samples_exhaustive:>13,} "
                  f"{_pct(m.fraction):>8} {_pct(m.floor):>6} {'yes' if r.unchanged else 'NO':>9} "
                  f"{f'{ok} of {len(r.whatifs)}':>9} {_pct(mean):>8}", file=out)
            print(f"  {'':<22} recorded: {_describe(r.recorded) if r.recorded else '-'}; racing: {_describe(m.racing)}",
                  file=out)
            for key, seed, step, max_steps in m.stops:
                share = f" ({step / max_steps:.0%})" if max_steps else ""
                skipped = sum(1 for k, _ in m.skipped if k == key)
                print(f"  {'':<22}   raced out: {key.label()} seed {seed} at step {step}{share}"
                      + (f", {skipped} later seed{'s' if skipped > 1 else ''} skipped" if skipped else ""), file=out)
            if m.after_pruned[0]:
                print(f"  {'':<22}   trained for configurations already out (an earlier seed pruned or failed): "
                      f"{m.after_pruned[0]} trainings, {m.after_pruned[1]:,} samples "
                      f"({_pct(m.after_pruned[1] / m.samples_exhaustive if m.samples_exhaustive else None)} "
                      f"of the exhaustive)", file=out)
            changed = [w for w in r.whatifs if not w.unchanged]
            for w in changed:
                print(f"  {'':<22}   what-if carried {w.carried.label()}: exhaustive {_describe(w.exhaustive)}, "
                      f"racing {_describe(w.racing)}", file=out)
            if r.note:
                print(f"  {'':<22}   note: {r.note}", file=out)
        if decided:
            trainings = f"{totals[0]}->{totals[1]}"
            fraction = totals[3] / totals[2] if totals[2] else None
            print(f"  {'all':<22} {'':>7} {trainings:>11} {totals[2]:>13,} {_pct(fraction):>8} {'':>6} "
                  f"{f'{unchanged}/{decided}':>9} {f'{whatif_ok}/{whatif_n}':>9} "
                  f"{_pct(whatif_samples[1] / whatif_samples[0] if whatif_samples[0] else None):>8}", file=out)
            if totals[4]:
                print(f"  trial-steps: {totals[4]:,} exhaustive, {totals[5]:,} under racing "
                      f"({_pct(totals[5] / totals[4])})", file=out)


# ------------------------------------------------------------------------------------------ live
@dataclass
class LiveRun:
    """One live run of a sweep: its storage, decisions, trainings and samples per step, wall time."""

    label: str
    spec: Any
    wall_s: float
    decisions: list[StepDecision]
    #: per step: (trainings run, trial-steps, samples)
    work: list[tuple[int, int, int]]
    steps: list[str]

    @property
    def trainings(self) -> int:
        return sum(w[0] for w in self.work)

    @property
    def trial_steps(self) -> int:
        return sum(w[1] for w in self.work)

    @property
    def samples(self) -> int:
        return sum(w[2] for w in self.work)


class _Progress:
    """One line per finished trial on stderr (a run takes minutes)."""

    def __init__(self, label: str) -> None:
        self.label, self.count, self.started = label, 0, time.perf_counter()

    def trial_finished(self, handle: Any, state: TrialState, reason: str, value: float | None = None) -> None:
        self.count += 1
        outcome = f"{value:.4g}" if value is not None else f"{state.name} {reason}".strip()
        print(f"  [{self.label} {time.perf_counter() - self.started:6.0f}s] #{self.count} "
              f"{handle.training.key.label()} seed {handle.training.seed}: {outcome} "
              f"({time.time() - handle.started:.1f}s)", file=sys.stderr, flush=True)

    def step_finished(self, spec: Any, index: int, study: Any, decision: StepDecision) -> None:
        print(f"  [{self.label}] {spec.study_name(index)}: {_describe(decision)}", file=sys.stderr, flush=True)


def project_spec(source: Path, root: Path, data_dir: Path, changes: dict[str, Any] | None = None) -> Path:
    """A copy of ``source`` in a project of its own under ``root`` (the bundled games, ``data_dir``)."""
    import yaml

    data = yaml.safe_load(source.read_text())
    data.update(changes or {})
    data["data"] = {**(data.get("data") or {}), "games": [str(REPO / "data" / "games")], "dir": str(data_dir)}
    data.pop("storage", None)
    data.pop("runs_dir", None)
    (root / "sweeps").mkdir(parents=True, exist_ok=True)
    path = root / "sweeps" / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_live(spec: Any, root: Path, label: str, racing: Racing) -> LiveRun:
    """Run ``spec`` with ``racing`` on a fresh storage ``root/<label>.db``; what each step trained."""
    import shutil

    import optuna

    from maou.sweep.records import read_sweep
    from maou.sweep.run.protocol import run_sweep
    from maou.sweep.storage import open_storage

    url = f"sqlite:///{root}/{label}.db"
    (root / f"{label}.db").unlink(missing_ok=True)  # a fresh run: the same seeds from the start
    shutil.rmtree(root / f"runs-{label}", ignore_errors=True)
    spec = dataclasses.replace(spec, racing=racing, storage=url, runs_dir=str(root / f"runs-{label}"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    outcome = run_sweep(spec, observers=(_Progress(f"{spec.name} {label}"),))
    wall = time.perf_counter() - started
    record = read_sweep(spec, open_storage(url, create=False), url)
    work = []
    for step in record.ran:
        trained = [t for t in deciding_trials(step.trials) if not t.reused and (t.steps_done or 0) > 0]
        work.append((len(trained), sum(t.steps_done or 0 for t in trained),
                     sum((t.steps_done or 0) * _batch(t) for t in trained)))
    return LiveRun(label, spec, wall, outcome.decisions, work, [s.study_name for s in record.ran])


def _undecided(decision: StepDecision, sigmas: float) -> list[ConfigKey]:
    """The challengers neither adopted-significant nor worse at ``sigmas``: the ones adaptive seeds
    would give another seed (the condition of ``maou.sweep.run.protocol._more_seeds``)."""
    from maou.sweep.run.stats import alpha_of

    alpha = alpha_of(sigmas)
    return [c.key for c in decision.comparisons
            if not c.significant and not (c.test.p is not None and c.test.se is not None and 1 - c.test.p < alpha)]


def _g(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1%}" if b else "-"


def compare_live(name: str, off: LiveRun, on: LiveRun, out: Any = None) -> tuple[bool, float, float]:
    """The per-step table of two live runs; (same decisions, samples ratio, trial-steps ratio)."""
    out = out or sys.stdout
    print(f"\nlive: {name}, racing off (exhaustive) and on (its defaults), seeds {list(off.spec.seed_list)}", file=out)
    print(f"  {'step':<26} {'decision off':<34} {'decision on':<34} {'same':>4} {'trainings':>9} "
          f"{'samples off -> on':>23} {'ratio':>6}", file=out)
    same_all = True
    for i, (d_off, d_on) in enumerate(zip(off.decisions, on.decisions, strict=False)):
        same = _outcome(d_off) == _outcome(d_on) and d_off.carried_key == d_on.carried_key
        same_all &= same
        w_off, w_on = off.work[i], on.work[i]
        samples = f"{w_off[2]:,} -> {w_on[2]:,}"
        print(f"  {off.steps[i].split('/', 1)[-1]:<26} {_describe(d_off)[:34]:<34} {_describe(d_on)[:34]:<34} "
              f"{'yes' if same else 'NO':>4} {f'{w_off[0]}->{w_on[0]}':>9} {samples:>23} "
              f"{_ratio(w_on[2], w_off[2]):>6}", file=out)
    if len(off.decisions) != len(on.decisions):
        same_all = False
        print(f"  the runs decided {len(off.decisions)} and {len(on.decisions)} steps", file=out)
    print(f"  {'all':<26} {'':<34} {'':<34} {'yes' if same_all else 'NO':>4} "
          f"{f'{off.trainings}->{on.trainings}':>9} {f'{off.samples:,} -> {on.samples:,}':>23} "
          f"{_ratio(on.samples, off.samples):>6}", file=out)
    print(f"  trial-steps {off.trial_steps:,} -> {on.trial_steps:,} ({_ratio(on.trial_steps, off.trial_steps)}); "
          f"wall time {off.wall_s:.0f}s -> {on.wall_s:.0f}s ({_ratio(on.wall_s, off.wall_s)})", file=out)
    return same_all, on.samples / off.samples, on.trial_steps / off.trial_steps


def compare_adaptive(off: LiveRun, adaptive: LiveRun, racing: Racing, out: Any = None) -> bool:
    """Adaptive seeds against the fixed-seed exhaustive run: does it decide where that cannot, for
    no more samples?"""
    out = out or sys.stdout
    print(f"\nadaptive seeds: racing.max_seeds {adaptive.spec.racing.max_seeds} against the fixed "
          f"{len(off.spec.seed_list)} seeds run exhaustively", file=out)
    ok = True
    for i, (d_off, d_ad) in enumerate(zip(off.decisions, adaptive.decisions, strict=False)):
        fixed_open, adaptive_open = _undecided(d_off, racing.sigmas), _undecided(d_ad, racing.sigmas)
        fixed_decides = d_off.adopted or not fixed_open
        adaptive_decides = d_ad.adopted or not adaptive_open
        best = d_ad.best_comparison
        rounds = (d_ad.seeds_added or {}).get("rounds", [])
        added = ", ".join(f"seed {r['seed']} to {len(r['configs'])}" for r in rounds)
        fixed_state = "decided" if fixed_decides else f"{len(fixed_open)} of {len(d_off.comparisons)} undecided"
        adaptive_state = "decided" if adaptive_decides else f"{len(adaptive_open)} of {len(d_ad.comparisons)} undecided"
        print(f"  {off.steps[i].split('/', 1)[-1]}:", file=out)
        print(f"    fixed seeds, exhaustive: {_describe(d_off)}; {fixed_state}", file=out)
        print(f"    adaptive:               {_describe(d_ad)}; {adaptive_state}; {len(rounds)} seed rounds added "
              f"({added or 'none'})", file=out)
        if best is not None:
            t = best.test
            print(f"    adaptive best challenger {best.key.label()}: gain {t.gain:.4g} +- {_g(t.se, '.2g')} over "
                  f"{t.n} seeds, p {_g(t.p, '.3g')}, Holm level {_g(best.level, '.3g')}", file=out)
        if fixed_decides:
            print("    the fixed-seed run already decides: adaptive seeds have nothing to add here", file=out)
        if not fixed_decides and not adaptive_decides:
            ok = False
    more = adaptive.samples <= off.samples
    print(f"  samples: adaptive {adaptive.samples:,} against exhaustive fixed-seed {off.samples:,} "
          f"({_ratio(adaptive.samples, off.samples)}); trainings {adaptive.trainings} against {off.trainings}; "
          f"wall time {adaptive.wall_s:.0f}s against {off.wall_s:.0f}s", file=out)
    return ok and more


def prebuild(spec: Any) -> None:
    """Build (and prove) the spec's datasets once, outside the timed runs."""
    from maou.data.resolve import dataset_of

    dataset_of(spec.base_config(), progress=False, check="full")


def live(which: str, workdir: Path, racing: Racing, max_seeds: int, quick: bool = False,
         seeds: int | None = None) -> list[str]:
    """Run the live comparisons; the targets missed (empty: all met)."""
    from maou.sweep.locate import load_spec

    missed: list[str] = []
    data_dir = workdir / "build"
    plans: list[tuple[str, Path, dict[str, Any] | None]] = []
    if quick:
        plans.append(("quick", STAGE3_SPEC, QUICK))
    else:
        if which in ("demo", "both"):
            plans.append(("demo", DEMO_SPEC, None))
        if which in ("stage3", "both"):
            plans.append(("stage3", STAGE3_SPEC, None))
    for name, source, changes in plans:
        root = workdir / name
        if seeds is not None:
            changes = {**(changes or {}), "seeds": seeds}
        spec = load_spec(project_spec(source, root, data_dir, changes))
        prebuild(spec)
        off = run_live(spec, root, "off", dataclasses.replace(racing, enabled=False, max_seeds=None))
        on = run_live(spec, root, "on", dataclasses.replace(racing, enabled=True, max_seeds=None))
        same, samples, steps = compare_live(name, off, on)
        if not same:
            missed.append(f"{name}: racing decided differently from the exhaustive run")
        if name in TARGETS:
            what, target = TARGETS[name]
            got = steps if what == "trial-steps" else samples
            verdict = "met" if got <= target else f"NOT met, by {got - target:.1%} of the exhaustive {what}"
            print(f"  target: at most {target:.0%} of the {what}: {got:.1%}, {verdict}")
            if got > target:
                missed.append(f"{name}: {got:.1%} of the exhaustive {what} (target {target:.0%})")
        from maou.sweep.run.executors import choose

        executor = choose(spec.executor, spec.base_config().threads)
        together = executor.at_once >= len(spec.seed_list)  # each configuration's seeds side by side
        replays = replay_storage(f"sqlite:///{root}/off.db", racing, together=together)
        schedule = "each configuration's seeds side by side" if together else "one trial at a time"
        print(f"  replayed with {schedule} (the live runs' {executor.line})")
        print_replay(replays, racing)
        predicted = sum(r.main.samples_racing for r in replays if r.main)
        print(f"  the replay of the exhaustive run predicts {predicted:,} samples under racing; "
              f"the live racing run trained {on.samples:,}")
        if max_seeds and (name == "stage3" or quick):
            adaptive = run_live(spec, root, "adaptive", dataclasses.replace(racing, enabled=True, max_seeds=max_seeds))
            if not compare_adaptive(off, adaptive, racing) and not quick:  # too small a sweep to judge
                missed.append(f"{name}: adaptive seeds (max_seeds {max_seeds}) did not decide where the fixed "
                              f"seeds cannot, or trained more than the exhaustive run")
    return missed


#: ``--quick``: the Stage 3 grid spec cut to a Stage 1 sweep of seconds (synthetic rows, no dataset).
QUICK: dict[str, Any] = {
    "name": "quick", "stage": 1, "seeds": 2,
    "base": {"model": {"arch": "resnet", "blocks": 1, "channels": 8}, "optim": {"name": "adamw", "lr": 0.003},
             "batch_size": 32, "device": "cpu", "threads": 1, "eval_rows": 256},
    "budget": {"max_steps": 30, "eval_every": 5},
    "steps": [{"name": "lr", "grid": {"optim.lr": [1e-5, 0.01]}}],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--replay", nargs="+", metavar="URL", help="replay these exhaustive storages only")
    mode.add_argument("--live", choices=("demo", "stage3", "both"), help="run both ways, compare, replay")
    mode.add_argument("--quick", action="store_true", help="a tiny Stage 1 live run both ways, and its replay")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where live runs keep their storages and datasets (default results/search-cost; "
                             "--quick: a temporary folder)")
    parser.add_argument("--max-seeds", type=int, default=6,
                        help="racing.max_seeds of the adaptive run (Stage 3 grid; 0: no adaptive run)")
    parser.add_argument("--seeds", type=int, default=None, help="live runs: this many seeds instead of the spec's")
    parser.add_argument("--start-fraction", type=float, default=Racing.start_fraction,
                        help="racing.start_fraction (default: racing's own)")
    parser.add_argument("--sigmas", type=float, default=Racing.sigmas, help="racing.sigmas (default: racing's own)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="replay one trial at a time (default: each configuration's seeds side by side, "
                             "as trials at once train them)")
    parser.add_argument("--no-what-ifs", action="store_true",
                        help="replay with the recorded carried configuration only")
    args = parser.parse_args(argv)
    racing = Racing(start_fraction=args.start_fraction, sigmas=args.sigmas)
    if args.replay:
        from maou.errors import UserError

        status = 0
        for url in args.replay:
            try:
                print_replay(replay_storage(url, racing, what_ifs=not args.no_what_ifs,
                                            together=not args.one_at_a_time), racing)
            except UserError as exc:  # a missing storage, a bad URL: one line, the others still replayed
                print(f"\nreplay of {url}: {exc}")
                status = 2
        return status
    if args.quick and args.workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            missed = live("quick", Path(tmp), racing, args.max_seeds and 3, quick=True, seeds=args.seeds)
    else:
        workdir = (args.workdir or REPO / "results" / "search-cost").resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        missed = live(args.live or "quick", workdir, racing, args.max_seeds, quick=args.quick, seeds=args.seeds)
    print()
    for line in missed:
        print(f"MISSED: {line}")
    print("every target met" if not missed else f"{len(missed)} targets missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
