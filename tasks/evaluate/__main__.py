"""`python -m tasks.evaluate`: the DVC stage's command."""

from tasks.common.process import exit_now
from tasks.evaluate.stage import main

main()
exit_now()
