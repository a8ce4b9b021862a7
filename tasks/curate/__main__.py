"""`python -m tasks.curate`: the DVC stage's command."""

from tasks.curate.stage import main

main()
