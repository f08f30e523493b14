"""Session set-up shared by every test module."""

from __future__ import annotations

import signal

# A shell that starts the test run in the background (``cmd &``, nohup) leaves SIGINT ignored, and
# Python keeps an inherited ignore: pytest, and every Python child a test starts, would then shrug
# off Ctrl-C (the reaper's sigint case and serve's Ctrl-C test fail that way). A handler, unlike an
# ignore, is reset to the default across exec, so children install their KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
