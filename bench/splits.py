"""Thread splits: how the server's core budget is divided between engine runs and decodes.

The server sizes its threads from a core budget (``server/flow/cpubudget.py``): an engine run
holds ``intra_op_threads`` cores, a decode one. The layouts below are measured on the fast
variant of each model, interleaved, at concurrency 1 and at saturation.
"""

from __future__ import annotations


def layouts(cores: int) -> list[tuple[str, dict[str, str]]]:
    """(label, server flags) for ``cores`` cores: the default first (every setting 0 = sized
    from the budget), then one-thread runs and decodes, the same with one instance per core,
    and full-width runs with one decode thread."""
    return [
        (f"intra {cores} / pre {cores} (default)", {}),
        ("intra 1 / pre 1", {"intra-op-threads": "1", "preprocess-threads": "1"}),
        (
            f"intra 1 / pre 1 / instances {cores}",
            {"intra-op-threads": "1", "preprocess-threads": "1", "instances": str(cores)},
        ),
        (f"intra {cores} / pre 1", {"intra-op-threads": str(cores), "preprocess-threads": "1"}),
    ]
