"""The live display of ``sweep run`` in an 80-column terminal: whole counts and ETAs, the plan's
estimate before a training finishes, a last frame that reads N/N, and log lines above the live
lines, never across them. The real :class:`~maou.cli.view.SweepView` is driven through the
observer calls the protocol and the recorder make (and, in a pseudo-terminal, by ``sweep run``)."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

from maou.cli.view import SweepView, clock, label_variants
from maou.sweep.identity import ConfigKey, short_keys
from maou.sweep.run.decision import ConfigStats, decide
from maou.sweep.spec import Objective, Selection

REPO = Path(__file__).resolve().parents[1]
ETA = re.compile(r"eta (\d+:\d\d:\d\d|-:--:--)$")
COUNT = re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])")
LONG = ConfigKey.of({"model.hidden_dim": 512, "model.dropout": 0.1, "optim.lr": 0.0003, "loss.gamma_neg": 2.0})


class Clock:
    """A monotonic clock that moves only when told (the view's ``clock``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def terminal(width: int = 80) -> Console:
    """A terminal's console (the live display comes up) whose output is kept."""
    return Console(width=width, force_terminal=True, file=io.StringIO())


class Screen:
    """Just enough of a VT100 for rich's live display: text with deferred autowrap, CR, LF,
    cursor up/down, erase in line, and SGR/cursor-visibility sequences ignored. ``wraps`` counts
    lines the terminal itself had to wrap (a line longer than the screen)."""

    def __init__(self, columns: int) -> None:
        self.columns, self.rows, self.row, self.col, self.wraps = columns, [[]], 0, 0, 0

    def _line(self) -> list[str]:
        while len(self.rows) <= self.row:
            self.rows.append([])
        return self.rows[self.row]

    def feed(self, text: str) -> None:
        for match in re.finditer(r"\x1b\[([?\d;]*)([A-Za-z])|\x1b.|[\r\n\b]|[^\x1b\r\n\b]", text):
            token = match.group(0)
            if token == "\r":
                self.col = 0
            elif token == "\n":
                self.row, self.col = self.row + 1, 0
            elif token == "\b":
                self.col = max(0, self.col - 1)
            elif match.group(2):
                number = int(match.group(1)) if match.group(1).isdigit() else 1
                if match.group(2) == "A":
                    self.row = max(0, self.row - number)
                elif match.group(2) == "B":
                    self.row += number
                elif match.group(2) == "K":
                    line = self._line()
                    del line[0 if match.group(1) == "2" else self.col:]
                elif match.group(2) == "G":
                    self.col = number - 1
            elif not token.startswith("\x1b"):
                if self.col >= self.columns:
                    self.wraps += 1
                    self.row, self.col = self.row + 1, 0
                line = self._line()
                line.extend(" " * (self.col - len(line)))
                line[self.col:self.col + 1] = [token]
                self.col += 1

    def lines(self) -> list[str]:
        lines = ["".join(line).rstrip() for line in self.rows]
        while lines and not lines[-1]:
            lines.pop()
        return lines


def shown(console: Console) -> list[str]:
    """The lines a terminal of the console's width shows after what the console wrote."""
    screen = Screen(console.width)
    screen.feed(console.file.getvalue())  # type: ignore[attr-defined]
    assert screen.wraps == 0, "\n".join(screen.lines())  # no line was longer than the terminal
    return screen.lines()


def frame(view: SweepView, width: int) -> list[str]:
    """The live lines as a terminal of ``width`` columns shows them now."""
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(view)
    return console.export_text().splitlines()


def handle(number: int, key: ConfigKey = LONG, seed: int = 0) -> SimpleNamespace:
    return SimpleNamespace(number=number, training=SimpleNamespace(key=key, seed=seed))


def step_run(pending: int) -> SimpleNamespace:
    return SimpleNamespace(recorder=SimpleNamespace(objective=Objective("val_f1", "maximize")),
                           pending=lambda: pending)


SPEC = SimpleNamespace(steps=[object(), object(), object()])


def decision(key: ConfigKey):
    return decide({key: ConfigStats(key, {0: 0.5, 1: 0.6})}, key, Objective("val_f1", "maximize"),
                  Selection())


def assert_whole(lines: list[str], width: int) -> None:
    """Every line fits, ends with a whole ETA and holds a whole ``done/total`` count; nothing is cut
    inside a number."""
    assert lines and all(len(line) <= width for line in lines), "\n".join(lines)
    for line in lines:
        assert ETA.search(line), line
        assert COUNT.search(line) or "starting" in line, line
        assert not re.search(r"\d…|…\d|[.=]…", line), line


def test_clock_and_labels_never_cut_a_number():
    assert clock(None) == "-:--:--" and clock(59.6) == "0:01:00" and clock(3 * 3600 + 62) == "3:01:02"
    assert short_keys(["loss.gamma_neg", "optim.lr", "model.lr"]) == ["gamma_neg", "optim.lr", "model.lr"]
    variants = label_variants(7, LONG, 2)
    assert variants[0] == "#7 loss.gamma_neg=2 model.dropout=0.1 model.hidden_dim=512 optim.lr=0.0003 seed 2"
    assert "#7 gamma_neg=2 dropout=0.1 hidden_dim=512 lr=0.0003 s2" in variants
    assert variants[-1] == "#7 … s2"
    assert [len(v) for v in variants] == sorted((len(v) for v in variants), reverse=True)


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_every_live_line_fits_with_whole_counts_and_etas(width):
    now = Clock()
    view = SweepView(Console(width=width, file=io.StringIO()), 10, 30.0, [2, 4, 4], clock=now)
    view.step_started(SPEC, 1, SimpleNamespace(study_name="demo/02-gamma-neg"), step_run(4))
    for number, key in ((12, LONG), (13, ConfigKey.of({})), (104, ConfigKey.of({"loss.asl_clip": 0.02}))):
        view.trial_started(handle(number, key, seed=1))
        view.trial_progress(handle(number), 1000, 12000, None)
        now.advance(0.01)
        view.trial_progress(handle(number), 6000, 12000, 3787.2)
        view.trial_reported(handle(number), 6000, {"train_loss": 0.18651234, "val_f1": 0.1506123})
    lines = frame(view, width)
    assert len(lines) == 4 and lines[0].startswith("trainings")
    assert_whole(lines, width)
    assert " 0/8 " in lines[0] and all(" 6000/12000 " in line for line in lines[1:])
    assert all("val_f1 0.1506" in line for line in lines[1:])  # the objective: kept at 80 columns
    assert ("loss 0.1865" in lines[1]) == (width >= 100)  # a wider terminal shows more
    assert ("3,787 samples/s" in lines[1]) == (width >= 120)
    assert ("elapsed 0:00:00" in lines[1]) == (width >= 160)
    if width == 80:  # short keys, then fewer keys (whole ones); a label that fits stays whole
        assert lines[1].startswith("#12 gamma_neg=2 dropout=0.1 … s1 ")
        assert lines[2].startswith("#13 (base) seed 1 ") and lines[3].startswith("#104 loss.asl_clip=0.02 seed 1 ")
    if width == 60:
        assert lines[1].startswith("#12 … s1 ")


def test_eta_from_the_plan_until_a_training_finishes_then_measured():
    console, now = terminal(), Clock()
    with SweepView(console, 10, 30.0, [2, 4, 4], clock=now) as view:
        view.step_started(SPEC, 0, SimpleNamespace(study_name="demo/01-baseline"), step_run(2))
        assert view.live is not None  # a terminal: the display is up from the first step
        view.trial_started(handle(0, ConfigKey.of({})))
        first = frame(view, 80)[0]
        assert " 0/10 step 1/3 " in first and first.endswith(" eta 0:05:00")  # 10 trainings of 30 s
        view.trial_progress(handle(0), 100, 200, None)
        assert frame(view, 80)[0].endswith("eta 0:04:45")  # less the half the running one did
        now.advance(20.0)
        view.trial_finished(handle(0, ConfigKey.of({})), TrialState.COMPLETE, "", 0.5)
        first = frame(view, 80)[0]
        assert " 1/10 " in first and first.endswith(" eta 0:03:00")  # now 9 trainings at the measured 20 s
    assert "  trial   0 COMPLETE (base) seed=0 val_f1=0.5 at step 100 (20.0s)" in shown(console)


def test_the_total_follows_the_steps_and_the_last_frame_reads_n_of_n():
    """The plan's bound (10: a later step may train the carried configuration) becomes what ran (8)."""
    console = terminal()
    with SweepView(console, 10, None, [2, 4, 4]) as view:
        number = 0
        for index, pending in enumerate((2, 4, 2)):
            study = SimpleNamespace(study_name=f"smoke/0{index + 1}")
            view.step_started(SPEC, index, study, step_run(pending))
            for seed in range(pending):
                view.trial_started(handle(number, LONG, seed))
                view.trial_progress(handle(number), 30, 30, 1000.0)
                view.trial_reported(handle(number), 30, {"train_loss": 0.1, "val_f1": 0.25})
                lines = frame(view, 80)
                assert_whole(lines, 80)
                view.trial_finished(handle(number, LONG, seed), TrialState.COMPLETE, "", 0.25)
                number += 1
            view.step_finished(SPEC, index, study, decision(LONG))
            assert f" {number}/{8 if index == 2 else number + sum([2, 4, 4][index + 1:])} " in frame(view, 80)[0]
    lines = shown(console)
    progress = [line for line in lines if line.startswith("trainings")]
    assert len(progress) == 1 and lines[-1] == progress[0], lines  # the live lines: last, and once
    assert_whole(progress, 80)
    assert " 8/8 step 3/3 " in progress[0] and progress[0].endswith(" eta 0:00:00")


def test_an_interrupted_sweep_keeps_its_honest_count():
    console = terminal()
    with pytest.raises(KeyboardInterrupt), SweepView(console, 10, None, [2, 4, 4]) as view:
        view.step_started(SPEC, 0, SimpleNamespace(study_name="s/01"), step_run(2))
        view.trial_started(handle(0))
        view.trial_finished(handle(0), TrialState.COMPLETE, "", 0.3)
        raise KeyboardInterrupt
    progress = [line for line in shown(console) if line.startswith("trainings")]
    assert len(progress) == 1 and " 1/10 " in progress[0]


def test_log_lines_prints_and_warnings_go_above_the_live_lines(capsys):
    """A stream handler made before the display (as Optuna's and Ray's are) writes through the
    display's console while it is up, and to its own stream again after."""
    logger = logging.getLogger("maou.test_view")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    original = handler.stream
    console = terminal()
    try:
        with SweepView(console, 4, 10.0, [4]) as view:
            view.step_started(SimpleNamespace(steps=[object()]), 0, SimpleNamespace(study_name="s/01"), step_run(4))
            view.trial_started(handle(0))
            logger.warning("storage unreachable; retrying for up to 60 s")
            print("a print from a library")
            # what Python writes for a warning (pytest records them instead of showing them)
            sys.stderr.write(warnings.formatwarning("a deprecation from torch", UserWarning, "torch/x.py", 7))
            view.trial_finished(handle(0), TrialState.PRUNED, "non_finite", None)
        assert handler.stream is original
        logger.warning("after the display")
    finally:
        logger.removeHandler(handler)
    lines = shown(console)
    assert "WARNING maou.test_view: storage unreachable; retrying for up to 60 s" in lines
    assert "a print from a library" in lines
    assert any(line.endswith("UserWarning: a deprecation from torch") for line in lines)
    assert lines.index("a print from a library") < lines.index(next(x for x in lines if x.startswith("trainings")))
    captured = capsys.readouterr()
    assert "storage unreachable" not in captured.err + captured.out and "a print" not in captured.out
    assert "after the display" in captured.err


def test_without_a_terminal_one_line_per_trial_and_no_display():
    console = Console(width=80, file=io.StringIO(), record=True)
    with SweepView(console, 2, 5.0, [2]) as view:
        view.step_started(SimpleNamespace(steps=[object()]), 0, SimpleNamespace(study_name="s/01"), step_run(2))
        view.trial_started(handle(0))
        view.trial_finished(handle(0), TrialState.FAIL, "error: boom", None)
        assert view.live is None
    assert "trial   0 FAIL" in console.export_text() and "━" not in console.export_text()


# ------------------------------------------------------------------ a real terminal, `sweep run`
@pytest.mark.slow
def test_sweep_run_in_an_80_column_pseudo_terminal(tmp_path):
    """``sweep run`` (fake trainer) in a pseudo-terminal of 80 columns: no live line wraps or is
    cut, and the screen ends on the whole sweep done, 4/4 (the plan said at most 6)."""
    import fcntl
    import struct
    import termios

    spec = {"name": "narrow", "stage": 1, "seeds": 2, "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1,
                                                            "optim": {"lr": 0.003}},
            "budget": {"max_steps": 40, "eval_every": 10},
            "steps": [{"name": "baseline", "description": "the base configuration alone"},
                      {"name": "lr", "description": "another learning rate?", "grid": {"optim.lr": [0.003, 0.01]}}]}
    (tmp_path / "sweeps").mkdir()
    path = tmp_path / "sweeps" / "narrow.yaml"
    path.write_text(yaml.safe_dump(spec))
    controller, term = pty.openpty()
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakes.py"), str(path), "0.1"], cwd=tmp_path,
                            stdin=term, stdout=term, stderr=term, env=env, start_new_session=True)
    os.close(term)
    out, deadline = b"", time.time() + 180
    while time.time() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")[-3000:]
    screen = Screen(80)
    screen.feed(out.decode(errors="replace"))
    lines = screen.lines()
    text = "\n".join(lines)
    assert screen.wraps == 0, text
    progress = [line for line in lines if line.startswith("trainings")]
    assert progress, text
    assert_whole(progress, 80)
    assert re.search(r" 4/4 step 2/2 .*eta 0:00:00$", progress[-1]), text
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if "─ done ─" in line)
