"""`python -m tasks.params check|overrides FILE...` (tasks/overlays.py)."""

from tasks.overlays import main

main()
