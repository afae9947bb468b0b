import logging
import os
import sys

from pipeline.cli import main

code = main()
# Leave without the interpreter's teardown (about 0.1 s of freeing modules and objects one by one):
# by now every file the command wrote is closed and synced, and every child process has exited.
logging.shutdown()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except (BrokenPipeError, OSError):   # the reader went away (`pipeline ... | head`): nothing to say
        pass
os._exit(code if isinstance(code, int) else 0)
