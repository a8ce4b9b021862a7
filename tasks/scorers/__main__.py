"""`python -m tasks.scorers`: the DVC stage's command."""

from tasks.common.process import exit_now
from tasks.scorers.stage import main

main()
exit_now()
