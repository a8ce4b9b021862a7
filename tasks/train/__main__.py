"""`python -m tasks.train pretrain|finetune`: the two training stages' command.

`pretrain` trains on both caption styles (paper 000 §II-B, Table II); `finetune` starts from
the pretrained weights on the inference-style captions. The same command runs under
`accelerate launch -m tasks.train pretrain` on GPUs; a killed run resumes from its last
checkpoint.
"""

from tasks.common.warm_start import delegate_if_served

delegate_if_served("tasks.train")  # a warm start where a trial worker serves one (else no-op)

import argparse  # noqa: E402

from tasks.common.process import exit_now  # noqa: E402
from tasks.train.stage import STAGES, main  # noqa: E402

parser = argparse.ArgumentParser(prog="python -m tasks.train", description=__doc__)
parser.add_argument("stage", choices=STAGES)
main(parser.parse_args().stage)
exit_now()
