"""Views of a run, read from the pool: status, token listings and export, the live terminal view, the report.

Each module is one command's implementation; ``agent.cli`` only declares the commands. The figures are
pure functions elsewhere (``agent.stats``, ``agent.views.figures``); these modules read the pool and print.
"""
