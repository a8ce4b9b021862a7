"""`python -m tasks.corpus`: the DVC stage's command."""

from tasks.corpus.stage import main

main()
