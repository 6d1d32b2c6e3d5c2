"""Running parties: the local launcher, the party process, multi-host clusters, the monitor.

Modules: ``launch`` (local sessions: forkserver, store, results), ``party`` (one party process from
start to teardown), ``cluster`` (a party or dealer on its own host), ``monitor`` (liveness and
failure reports), ``jobs`` (resolving the user's job), ``preload`` (the forkserver's imports).
Outside ``veil.mpc`` they are reached through ``veil.mpc`` (``run``, ``preload``, ``run_party``,
``run_dealer``) and :mod:`veil.mpc.host` (what ``veil party`` and the CLI need).
"""
