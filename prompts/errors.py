"""The one exception type for problems with what the user gave us.

Everything downstream (pipelines, erase, eval) raises subclasses of ``InputError`` for bad
files, names and numbers; the CLI prints the message as one line and exits with status 2. The
message names the problem and the fix. Any other exception is a bug and keeps its traceback.
"""


class InputError(Exception):
    """A problem with the user's input; ``str(err)`` is a complete one-line explanation."""


class PromptFileError(InputError):
    """A prompt list that cannot be read: names the file, the line and the problem."""

    def __init__(self, path: object, line: int | None, problem: str):
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem
