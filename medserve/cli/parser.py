"""The command line's argument parser: argparse with a did-you-mean for unknown commands, choices and
options (what Python 3.14 offers as ``suggest_on_error``), and usage errors from the sub-command that
was being parsed, so its usage line is the one shown."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from medserve.values.suggestions import closest, did_you_mean

#: Where the innermost sub-command's parser is left on the namespace while parsing.
_INNERMOST = "_medserve_innermost_parser"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that suggests the nearest command, choice or option on a typo."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(choice) for choice in choices]
        listed = ", ".join(repr(name) for name in names)
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r}{did_you_mean(str(value), names)} (choose from {listed})"
        )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, _INNERMOST):  # a sub-command's parser returns first: keep it
            setattr(parsed, _INNERMOST, self)
        return parsed, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        innermost: Parser = vars(parsed).pop(_INNERMOST, self)
        if extras:
            innermost.unrecognized(extras)
        return parsed

    def option_strings(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings]

    def unrecognized(self, extras: list[str]) -> NoReturn:
        hints = []
        for extra in extras:
            if extra.startswith("-") and len(extra) > 1:
                match = closest(extra.split("=", 1)[0], self.option_strings())
                if match is not None:
                    hints.append(f"'{extra.split('=', 1)[0]}': did you mean '{match}'?")
        suffix = f" ({'; '.join(hints)})" if hints else ""
        self.error(f"unrecognized arguments: {' '.join(extras)}{suffix}")
