"""The process's exit codes, for the CLI and the daemon (DESIGN: a bad config exits 2)."""

#: Done: the command succeeded, or the daemon stopped after a signal.
EXIT_OK = 0
#: Failed at run time (a second signal; some letters of a redrive failed; some CronJobs
#: were not converted).
EXIT_FAILURE = 1
#: A user error: a bad config, expression, setting or option; one line per problem.
EXIT_USAGE = 2
