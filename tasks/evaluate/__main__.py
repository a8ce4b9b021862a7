"""`python -m tasks.evaluate`: the DVC stage's command."""

from tasks.evaluate.stage import main

main()
