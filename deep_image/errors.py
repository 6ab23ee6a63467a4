"""Bad input ends a command with one line naming the problem and what to do, and exit code 2."""

from __future__ import annotations

import contextlib
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from deep_image.config import ConfigError
from deep_image.data.errors import DataError
from deep_image.parallel.mesh import MeshError

USER_ERRORS = (ConfigError, DataError, MeshError, FileNotFoundError, PermissionError)
EXIT_CODE = 2


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CODE)


@contextlib.contextmanager
def one_line():
    from deep_image.training.loop import WorkdirError
    try:
        yield
    except (*USER_ERRORS, WorkdirError) as e:
        fail(str(e))


def _words(e: BaseException) -> str:
    text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    text = " ".join(text.replace("\\n", " ").replace("\\'", "'").split())
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] == "'" else text


def _parse_flags(argv):
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS.config.keys()   # config_flags defers load errors to first use
    except flags.Error as e:
        fail(_words(e))
    except (KeyError, AttributeError) as e:  # ml_collections: an override names no key
        fail(f"unknown config key in an override: {_words(e)}")
    except (ValueError, TypeError) as e:
        fail(f"bad config override: {_words(e)}")
    except OSError as e:
        cause = e.__cause__ or e
        fail(f"cannot load the config file: {_words(cause)}")
    return rest


class QuietLibraries(logging.Filter):
    """Keeps the libraries' chatter (orbax's per-save and per-restore INFO, its read-only
    notices, grain's and JAX's) out of what the user reads: only records at `level` or above
    pass from them; our own records always pass."""

    LIBRARIES = ("/orbax/", "/grain/", "/absl/", "/jax/", "/jaxlib/", "/etils/", "/flax/")

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno >= self.level or not any(
            part in record.pathname for part in self.LIBRARIES)


def run_app(main, required=(), library_level: int = logging.WARNING):
    """absl's app.run, with flag and config errors reported as one line, and library log
    records below `library_level` dropped."""
    for name in required:
        flags.mark_flag_as_required(name)

    def quiet_main(argv):
        absl_logging.get_absl_handler().addFilter(QuietLibraries(library_level))
        return main(argv)
    app.run(quiet_main, flags_parser=_parse_flags)
