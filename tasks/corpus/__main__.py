"""`python -m tasks.corpus`: the DVC stage's command."""

from tasks.common.process import exit_now
from tasks.corpus.stage import main

main()
exit_now()
