"""`python -m tasks.scorers`: the DVC stage's command."""

from tasks.scorers.stage import main

main()
