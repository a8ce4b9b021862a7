"""`python -m tasks.scorers`: the DVC stage's command."""

from tasks.common.warm_start import delegate_if_served

delegate_if_served("tasks.scorers")  # a warm start where a trial worker serves one (else no-op)

from tasks.common.process import exit_now  # noqa: E402
from tasks.scorers.stage import main  # noqa: E402

main()
exit_now()
