"""Signal set-up for tests that send Ctrl-C (SIGINT) to a child process."""

from __future__ import annotations

import signal


def default_ctrl_c() -> None:
    """``preexec_fn`` for a child that must see Ctrl-C: SIGINT back at its default. A shell that
    starts the test run in the background (``cmd &``, nohup) ignores SIGINT, children inherit the
    ignore, and Python then never installs its KeyboardInterrupt handler, so the child would shrug
    off the test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
