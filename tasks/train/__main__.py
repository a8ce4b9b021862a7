"""`python -m tasks.train pretrain|finetune`: the two training stages' command.

`pretrain` trains on both caption styles (paper 000 §II-B, Table II); `finetune` starts from
the pretrained weights on the inference-style captions. The same command runs under
`accelerate launch -m tasks.train pretrain` on GPUs; a killed run resumes from its last
checkpoint.
"""

import argparse

from tasks.common.process import exit_now
from tasks.train.stage import STAGES, main

parser = argparse.ArgumentParser(prog="python -m tasks.train", description=__doc__)
parser.add_argument("stage", choices=STAGES)
main(parser.parse_args().stage)
exit_now()
