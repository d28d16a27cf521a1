"""`extract.cli.setup_logging` logs to the stderr of the moment, not to the one it was set up under."""
import contextlib
import io
import logging

from extract import cli


def test_a_command_run_under_a_redirection_leaves_no_handler_on_a_closed_stream():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        first, later = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(first):  # a command run inside a test's captured output
            cli.setup_logging()
            logging.getLogger("dmver.test").warning("during")
        first.close()  # what a test's capture does when it ends
        with contextlib.redirect_stderr(later):
            logging.getLogger("dmver.test").warning("after")
        assert later.getvalue() == "warning: after\n"  # no "--- Logging error ---" about the closed stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
