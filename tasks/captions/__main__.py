"""`python -m tasks.captions`: the DVC stage's command."""

from tasks.captions.stage import main
from tasks.common.process import exit_now

main()
exit_now()
