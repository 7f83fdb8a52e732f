"""The SPEC argument every sweep command takes: a path, or a name under a ``sweeps/`` folder."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_spec_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="a spec file, or a name: stage2-asl finds sweeps/stage2-asl.yaml")
    parser.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")


def spec_of(args: argparse.Namespace) -> Any:
    """The spec ``args.spec`` names, validated, its paths read against its project."""
    from maou.sweep.locate import load_spec, locate_spec

    spec = load_spec(locate_spec(args.spec))
    if getattr(args, "executor", None):
        spec = dataclasses.replace(spec, executor=dataclasses.replace(spec.executor, kind=args.executor))
    return spec
