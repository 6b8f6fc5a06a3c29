"""``python -m bench.serve [server flags]``: the server (``server.cli.main``) with named threads.

The same server as ``python -m server``, with one addition: every thread gets its Python name
as its OS name (see :func:`bench.threads.name_threads`), so the benchmark can attribute CPU
time to the event loop, decode threads, runners and the engine runtime.
"""

from server.cli import main

from .threads import name_threads

if __name__ == "__main__":
    name_threads()
    main()
