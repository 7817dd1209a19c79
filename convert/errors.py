"""The one error type of the converter: it carries every problem found, not just the first."""

from collections.abc import Sequence


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; ``problems`` lists every offending key or file."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__(f"{len(self.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in self.problems))
