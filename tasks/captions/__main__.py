"""`python -m tasks.captions`: the DVC stage's command."""

from tasks.captions.stage import main

main()
