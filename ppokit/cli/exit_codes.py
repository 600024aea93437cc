"""The exit codes of ``ppokit`` besides 0 (and a relaunch's lost contact, :data:`ppokit.launch.EXIT_LOST_CONTACT`)."""

#: Bad input: a config value, a file, an env id (the one-line ``ppokit: error: ...``).
EXIT_USAGE = 2
#: Stopped by Ctrl-C (SIGINT; SIGTERM has its own code, :data:`ppokit.io.interrupt.EXIT_CODES`).
EXIT_INTERRUPTED = 130
#: The reader of the output went away (``ppokit presets | head``): 128 + SIGPIPE, what a shell reports.
EXIT_BROKEN_PIPE = 141
