"""Bad input, and faults a user can act on, end a command with one line naming the problem and
what to do, and exit code 2."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time
import traceback

from absl import app, flags
from absl import logging as absl_logging

from deep_image.config import ConfigError
from deep_image.data.errors import DataError
from deep_image.parallel.mesh import MeshError

USER_ERRORS = (ConfigError, DataError, MeshError, FileNotFoundError, PermissionError)
EXIT_CODE = 2
# Errors of the machine a user can act on, wherever they surface (an async checkpoint save, a
# data read): what happened, and what to do.
ENVIRONMENT = {
    errno.ENOSPC: "free space there (or pass another --workdir)",
    errno.EDQUOT: "free space within your quota there (or pass another --workdir)",
    errno.EACCES: "make it writable for you (or pass another --workdir)",
    errno.EPERM: "make it writable for you (or pass another --workdir)",
    errno.EROFS: "use a writable file system (or pass another --workdir)",
    errno.ENOENT: "check that it still exists (is the data or work directory still mounted?)",
}
_TEXTS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
          "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}

flags.DEFINE_bool("verbose", False, "Print the full traceback of an error, not one line.")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    # what libraries log while the interpreter shuts down (e.g. asyncio reporting the other
    # failed writes of the same save) is not the user's business: the line above is the error
    logging.disable(logging.CRITICAL)
    sys.exit(EXIT_CODE)


def environment_error(e: BaseException) -> OSError | None:
    """The OSError a user can act on behind `e` (its causes and contexts included), also when
    a library reports it only in its text (tensorstore writing a checkpoint)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT:
            return e
        for text, code in _TEXTS.items():
            if text in str(e):
                return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


def _keep_traceback(log_dir: str | None) -> str:
    """Writes the current exception's traceback to LOG_DIR/error.log; says where, or ''."""
    text = traceback.format_exc()
    if flags.FLAGS.is_parsed() and flags.FLAGS.verbose:
        print(text, file=sys.stderr, end="")
    if not log_dir or not os.path.isdir(log_dir):
        return ""
    path = os.path.join(log_dir, "error.log")
    try:
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}")
    except OSError:
        return ""
    return f" (traceback in {path})"


@contextlib.contextmanager
def one_line(log_dir: str | None = None):
    """Bad input, divergence, an unusable checkpoint and a full disk, a missing permission or a
    vanished directory end as one line on stderr and exit code 2; the traceback goes to
    LOG_DIR/error.log (and to the terminal with --verbose). Anything else propagates."""
    from deep_image.training.checkpoint import CheckpointError
    from deep_image.training.loop import DivergenceError, WorkdirError
    try:
        yield
    except (*USER_ERRORS, WorkdirError, CheckpointError, DivergenceError) as e:
        where = _keep_traceback(log_dir) if isinstance(e, DivergenceError) else ""
        fail(str(e) + where)
    except Exception as e:
        env = environment_error(e)
        if env is None:
            raise
        what = env.strerror or os.strerror(env.errno)
        at = f" at {env.filename}" if getattr(env, "filename", None) else ""
        fail(f"{what}{at}: {ENVIRONMENT[env.errno]}, then rerun the same command (it resumes "
             f"from the last complete checkpoint){_keep_traceback(log_dir)}")


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
