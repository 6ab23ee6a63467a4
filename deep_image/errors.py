"""Bad input ends a command with one line naming the problem and what to do, and exit code 2."""

from __future__ import annotations

import contextlib
import sys

from absl import app, flags

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


def run_app(main, required=()):
    """absl's app.run, with flag and config errors reported as one line."""
    for name in required:
        flags.mark_flag_as_required(name)
    app.run(main, flags_parser=_parse_flags)
