"""`python -m tasks.latents`: the DVC stage's command."""

from tasks.common.process import exit_now
from tasks.latents.stage import main

main()
exit_now()
