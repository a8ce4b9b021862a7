"""`python -m tasks.curate`: the DVC stage's command."""

from tasks.common.process import exit_now
from tasks.curate.stage import main

main()
exit_now()
