"""``digitmatch serve``: the matcher as a command, its signals and its bounded shutdown.

SIGTERM or SIGINT starts a graceful shutdown (drain, flush, commit, leave the group). The matcher
runs on a thread of its own, so that the main thread stays free to handle the signals and to end a
shutdown that a frozen broker holds up (a commit or a group leave that never returns): after
``--shutdown-timeout-s`` the process exits with status 3; what was not committed is read again on
restart. Bad options, a bad ``--model``, a taken metrics port or, exactly once, a broker that cannot
do transactions: one line, status 2. Exactly once, a producer that cannot go on (fenced): one log
line, status 1 (consumer/transactions.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from digitmatch.consumer.config import MatcherConfig, add_matcher_options

log = logging.getLogger(__name__)

# Exit status when a graceful shutdown outlasted --shutdown-timeout-s.
SHUTDOWN_TIMED_OUT = 3


def configure(parser: argparse.ArgumentParser) -> None:
    add_matcher_options(parser)


def run(args: argparse.Namespace) -> int:
    from digitmatch.consumer.matcher import Matcher
    from digitmatch.kafka.configuration import quiet_client_logs
    from digitmatch.kafka.exceptions import InvalidConfiguration, TransactionsUnavailable
    from digitmatch.model.serving import ModelError
    from digitmatch.settings import model_problem

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        quiet_client_logs()
    try:
        config = MatcherConfig.from_args(args)
    except InvalidConfiguration as exc:
        print(f"digitmatch serve: {exc}", file=sys.stderr)
        return 2
    problem = model_problem("--model", config.model)  # before the endpoints and TensorFlow start
    if problem:
        print(f"digitmatch serve: {problem}", file=sys.stderr)
        return 2
    matcher = Matcher(config)
    stopping: list[float] = []  # when the first SIGTERM / SIGINT came

    def _stop(signum, _frame):
        log.info("received %s: stopping gracefully (at most %.0f s)", signal.Signals(signum).name,
                 config.shutdown_timeout_s)
        stopping.append(time.monotonic())
        matcher.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    matcher.start()
    while matcher.running():
        matcher.wait(0.2)
        if stopping and time.monotonic() - stopping[0] > config.shutdown_timeout_s:
            log.error("shutdown did not finish within %.0f s (broker unreachable?): exiting now; what was "
                      "not committed is read again on restart", config.shutdown_timeout_s)
            logging.shutdown()
            os._exit(SHUTDOWN_TIMED_OUT)
    if isinstance(matcher.error, (ModelError, OSError, TransactionsUnavailable)):  # OSError: e.g. the port is taken
        print(f"digitmatch serve: {matcher.error}", file=sys.stderr)
        return 2
    return 0 if matcher.error is None else 1
