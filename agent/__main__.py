"""``python -m agent`` is the same as running pilot.pyz."""

from agent.cli import main

main()
