"""One error hierarchy. The CLI prints any TsugikiError as one line and exits with code 2."""


class TsugikiError(Exception):
    """Base of every error caused by the user's input (files, recipes, options)."""

    exit_code = 2


class RecipeError(TsugikiError):
    """A recipe that cannot be parsed or validated; the message names file:line where known."""


class CheckpointError(TsugikiError):
    """A checkpoint that is missing, corrupt, refused (pickle) or inconsistent; names file and tensor."""


class MergeError(TsugikiError):
    """Sources that cannot be merged together (shapes, architectures, missing tensors, bad values)."""


class UnknownNameError(TsugikiError, KeyError):
    """A name looked up in a Registry that does not exist."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class OutputExistsError(TsugikiError):
    """The output path exists and --force was not given."""


class OutputWriteError(TsugikiError):
    """Writing an output failed (disk full, I/O error); the output is left as it was."""


class BenchmarkError(TsugikiError):
    """Benchmark data, predictions or options that cannot be used; names the file (and line) where known."""


class EvolutionError(TsugikiError):
    """An evolution config, run directory or search that cannot proceed (names file:line or the run dir)."""
