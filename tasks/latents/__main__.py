"""`python -m tasks.latents`: the DVC stage's command."""

from tasks.latents.stage import main

main()
