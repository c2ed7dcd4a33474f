"""``signal-backend``: the service and the headless CLI.

Each subcommand imports what it needs when it runs, so ``--help`` and the light commands
(project, recipe) start without loading torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register a subcommand ``name`` (space-separated for nested: 'project init')."""

    def wrap(fn: Handler) -> Handler:
        _COMMANDS.append((name, help_text, configure, fn))
        return fn

    return wrap


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _size(text: str) -> tuple[int, int]:
    """Parse WIDTHxHEIGHT."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


# --- project --------------------------------------------------------------------------------


@command("project init", "create a project folder", lambda p: p.add_argument("dir", type=Path))
def _project_init(args: argparse.Namespace) -> int:
    from backend.store import Project

    with Project.init(args.dir) as project:
        print(f"created project {project.root} (schema {project.applied_migrations()[-1]})")
    return 0


@command("project info", "show a project's counts and schema", lambda p: p.add_argument("dir", type=Path))
def _project_info(args: argparse.Namespace) -> int:
    import json

    from backend.store import Project

    with Project.open(args.dir) as project:
        print(json.dumps(project.info(), indent=2))
    return 0


# --- recipes --------------------------------------------------------------------------------


@command("recipe validate", "check a recipe file; print every problem", lambda p: p.add_argument("file", type=Path))
def _recipe_validate(args: argparse.Namespace) -> int:
    import backend.stages  # noqa: F401  (every stage's recipe kind, plugins included)
    from backend.recipes import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.file)
    except RecipeError as exc:
        print(f"{args.file}: {len(exc.issues)} problem(s)", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid {recipe.kind} recipe")
    return 0


def _show_args(p: argparse.ArgumentParser) -> None:
    import backend.stages  # noqa: F401  (every stage's recipe kind, plugins included)
    from backend.recipes import RECIPE_KINDS

    p.add_argument("kind", choices=sorted(RECIPE_KINDS))


@command("recipe show", "print a commented default recipe of a kind", _show_args)
def _recipe_show(args: argparse.Namespace) -> int:
    from backend.recipes import default_recipe, dumps_recipe

    sys.stdout.write(dumps_recipe(default_recipe(args.kind)))
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-backend", description="Signal Studio backend: service and headless CLI")
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    parents: dict[str, argparse.ArgumentParser] = {}
    for name, help_text, configure, fn in _COMMANDS:
        words = name.split()
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text, description=help_text)
        else:
            group, leaf = words
            if group not in parents:
                parents[group] = top.add_parser(group, help=f"{group} commands")
                groups[group] = parents[group].add_subparsers(dest="sub", metavar="SUBCOMMAND")
                groups[group].required = True
            sub = groups[group].add_parser(leaf, help=help_text, description=help_text)
        configure(sub)
        sub.set_defaults(handler=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    args = build_parser().parse_args(argv)
    from backend.recipes import RecipeError
    from backend.store import ProjectError

    try:
        return int(args.handler(args) or 0)
    except (ProjectError, RecipeError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


def _load_commands() -> None:
    """Import the modules whose ``@command`` functions extend the CLI."""
    import importlib

    for module in _COMMAND_MODULES:
        importlib.import_module(module)


_COMMAND_MODULES: tuple[str, ...] = ("backend.cli_world", "backend.cli_engine", "backend.demo", "backend.base_model", "backend.scripted_rater", "backend.cli_ratings")

