"""Subcommands of a later phase. Importing this module must stay light (argparse only)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this phase's subcommands on the `mlops` parser."""
